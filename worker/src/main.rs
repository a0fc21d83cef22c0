//! `proxyfleet-worker`: the worker's binary; [`proxyfleet_worker::program::main`] does the work.

/// Many small allocations (candidates, verdicts, messages) come and go: mimalloc serves them with
/// less CPU and less fragmentation than the system allocator. It is built without transparent
/// huge pages, whose 2 MB first touches cost more time and memory here than they save.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    proxyfleet_worker::program::main().await
}
