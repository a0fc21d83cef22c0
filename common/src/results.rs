//! Reading a job's results as a client does: a GetResults stream, page after page.

use proxyfleet_proto::v1;

/// Every result a GetResults stream carries, in its order, once the stream ends; the first error
/// ends the read (the job pruned meanwhile, the coordinator lost).
pub async fn read_all(
    mut pages: tonic::Streaming<v1::ResultsPage>,
) -> Result<Vec<v1::ProxyResult>, tonic::Status> {
    let mut results = Vec::new();
    while let Some(page) = pages.message().await? {
        results.extend(page.results);
    }
    Ok(results)
}
