//! The configuration file (`--config FILE`, `PROXYFLEET_CONFIG`): one TOML file whose tables hold
//! the long flags of the coordinator (`[coordinator]`), the workers (`[worker]`) and the CLI
//! (`[client]`, a table per command, `[pools.NAME]`), applied under the command line and the
//! environment: flags > environment > file > defaults.
//!
//! The file is read against the programs' clap commands, so every flag is a key without a list
//! kept here: a key is a flag's long name (kebab or snake case), an array repeats the flag, a
//! boolean turns a switch on or off, durations stay strings ("30s"). Relative paths are taken
//! from the file's directory. A mistake names the file, the line and column, the key and what
//! was expected, before the program does anything.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches, ValueHint};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The flag (and its environment variable) that names the file.
pub const CONFIG_FLAG: &str = "config";
pub const CONFIG_ENV: &str = "PROXYFLEET_CONFIG";

/// Every table a proxyfleet program reads: a program accepts the tables of the others without
/// checking their keys (they are checked by the program that reads them; the CLI checks all).
pub const TABLES: &[&str] = &[
    "coordinator",
    "worker",
    "client",
    "pools",
    "submit",
    "watch",
    "results",
    "job",
    "jobs",
    "workers",
    "cancel",
    "run",
    "demo",
    "health",
    "farm",
    "refresh",
    "pool",
    "gateway",
];

/// The table under which the pools' own settings go: `[pools.NAME]`.
const POOLS: &str = "pools";
/// The argument that names the pool a command works on.
const POOL_ARG: &str = "pool";

/// How one program's flags sit in the file.
#[derive(Debug, Clone)]
pub struct Program {
    /// The table of the top-level command's flags.
    pub table: &'static str,
    pub command: Command,
    /// Flags of the subcommands that the top-level table sets for all of them (the CLI's
    /// connection flags: coordinator, token, ca...).
    pub shared: &'static [&'static str],
}

impl Program {
    pub fn new(table: &'static str, command: Command) -> Program {
        Program {
            table,
            command,
            shared: &[],
        }
    }

    /// The top-level table also sets these flags of the subcommands.
    pub fn sharing(mut self, shared: &'static [&'static str]) -> Program {
        self.shared = shared;
        self
    }
}

/// Where a key or value sits in the file, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// A configuration file that cannot be used, with the place to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), at.map(|p| format!(":{}:{}", p.line, p.column)).unwrap_or_default())]
pub struct ConfigFileError {
    pub file: PathBuf,
    pub at: Option<Position>,
    pub message: String,
}

/// Why the command line cannot be used.
#[derive(Debug)]
pub enum Failure {
    /// Clap's own: usage errors, and --help and --version (exit 0).
    Clap(clap::Error),
    /// A clap error caused by values from the file, with where they are.
    ClapWithFile {
        error: clap::Error,
        file: PathBuf,
        notes: Vec<String>,
    },
    File(ConfigFileError),
}

impl Failure {
    /// Prints the error and exits: status 2 for usage and file errors, as clap does.
    pub fn exit(self) -> ! {
        match self {
            Failure::Clap(e) => e.exit(),
            Failure::ClapWithFile { error, file, notes } => {
                let _ = error.print();
                for note in notes {
                    eprintln!("note: {}: {note}", file.display());
                }
                std::process::exit(error.exit_code())
            }
            Failure::File(e) => {
                eprintln!("error: {e}");
                std::process::exit(2)
            }
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Clap(e) => write!(f, "{}", e.render()),
            Failure::ClapWithFile { error, file, notes } => {
                write!(f, "{}", error.render())?;
                for note in notes {
                    write!(f, "\nnote: {}: {note}", file.display())?;
                }
                Ok(())
            }
            Failure::File(e) => write!(f, "error: {e}"),
        }
    }
}

/// `command` with the `--config` flag, global so it may follow a subcommand.
pub fn with_config_flag(command: Command) -> Command {
    if command.get_arguments().any(|a| a.get_id() == CONFIG_FLAG) {
        return command;
    }
    command.arg(
        Arg::new(CONFIG_FLAG)
            .long(CONFIG_FLAG)
            .env(CONFIG_ENV)
            .global(true)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML file with settings for this program's flags (see proxyfleet.example.toml); flags and environment variables override it"),
    )
}

/// Parses the process's command line for `programs[0]` (the others' tables are checked too),
/// with the configuration file under the flags and the environment; prints the error and exits
/// on a usage or file error.
pub fn parse<T: FromArgMatches>(programs: &[Program]) -> T {
    try_parse_from(programs, std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// [`parse`] over `argv`, returning the failure.
pub fn try_parse_from<T, I, S>(programs: &[Program], argv: I) -> Result<T, Failure>
where
    T: FromArgMatches,
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut command = with_config_flag(programs[0].command.clone());
    command.build();
    // A first, lenient pass says which subcommand runs and which flags the command line and the
    // environment already set.
    let first = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .map_err(Failure::Clap)?;
    let Some(path) = config_path(&first) else {
        return finish(&mut command, argv, None);
    };
    let file = ConfigFile::read(&path).map_err(Failure::File)?;
    let schemas = Schemas::new(programs);
    file.check(&schemas).map_err(Failure::File)?;
    let plan = file.plan(&programs[0], &command, &first);
    let argv = plan.argv(argv);
    finish(&mut command, argv, Some((&file, &plan)))
}

/// Reads and checks `path` against `programs`, as a program started with `--config path` does.
pub fn check_file(path: &Path, programs: &[Program]) -> Result<(), ConfigFileError> {
    ConfigFile::read(path)?.check(&Schemas::new(programs))
}

fn config_path(matches: &ArgMatches) -> Option<PathBuf> {
    let mut level = Some(matches);
    let mut found = None;
    while let Some(m) = level {
        if let Ok(Some(p)) = m.try_get_one::<PathBuf>(CONFIG_FLAG) {
            found = Some(p.clone());
        }
        level = m.subcommand().map(|(_, sub)| sub);
    }
    found
}

fn finish<T: FromArgMatches>(
    command: &mut Command,
    argv: Vec<OsString>,
    file: Option<(&ConfigFile, &Plan)>,
) -> Result<T, Failure> {
    let blame = |error: clap::Error| match file {
        Some((file, plan)) => file.blame(plan, error),
        None => Failure::Clap(error),
    };
    let matches = command.try_get_matches_from_mut(argv).map_err(blame)?;
    T::from_arg_matches(&matches).map_err(|e| Failure::Clap(e.format(command)))
}

/// A value as the file gives it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// A string or a number, as text.
    Text(String),
    Bool(bool),
    List(Vec<String>),
    Table,
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Text(_) => "a string or number",
            Value::Bool(_) => "a boolean",
            Value::List(_) => "an array",
            Value::Table => "a table",
        }
    }
}

/// One `key = value` of a table.
#[derive(Debug, Clone)]
struct Setting {
    /// The key as written.
    key: String,
    value: Value,
    key_at: Position,
    value_at: Position,
}

/// One table: its dotted name and its settings by normalized (kebab-case) key.
#[derive(Debug, Clone, Default)]
struct Table {
    at: Option<Position>,
    settings: BTreeMap<String, Setting>,
}

/// A parsed configuration file.
#[derive(Debug, Clone)]
struct ConfigFile {
    path: PathBuf,
    /// Relative paths in the file are taken from here.
    dir: PathBuf,
    /// Tables by dotted name: "coordinator", "submit", "pools.shop".
    tables: BTreeMap<String, Table>,
}

/// Whether the table `name` is a pool's: `pools.NAME`, whose NAME may hold dots.
fn is_pool_table(name: &str) -> bool {
    name.strip_prefix(POOLS)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|pool| !pool.is_empty())
}

/// The table `name` as written in the file: `[submit]`, `[pools."eu.west"]`.
fn header(name: &str) -> String {
    match name.strip_prefix("pools.") {
        Some(pool) if is_pool_table(name) && pool.contains('.') => format!("[{POOLS}.{pool:?}]"),
        _ => format!("[{name}]"),
    }
}

/// `max_failures` and `max-failures` are the same key.
fn normalize(key: &str) -> String {
    key.replace('_', "-")
}

impl ConfigFile {
    fn read(path: &Path) -> Result<ConfigFile, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
            file: path.to_path_buf(),
            at: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        ConfigFile::parse(path, dir, &text)
    }

    fn parse(path: &Path, dir: PathBuf, text: &str) -> Result<ConfigFile, ConfigFileError> {
        let error = |offset: Option<usize>, message: String| ConfigFileError {
            file: path.to_path_buf(),
            at: offset.map(|o| position(text, o)),
            message,
        };
        let root = DeTable::parse(text).map_err(|e| {
            error(
                e.span().map(|s| s.start),
                format!("not valid TOML: {}", e.message().trim()),
            )
        })?;
        let mut file = ConfigFile {
            path: path.to_path_buf(),
            dir,
            tables: BTreeMap::new(),
        };
        for (key, value) in root.get_ref() {
            if let DeValue::Array(items) = value.get_ref()
                && !items.is_empty()
                && items
                    .iter()
                    .all(|item| matches!(item.get_ref(), DeValue::Table(_)))
            {
                return Err(error(
                    Some(key.span().start),
                    format!(
                        "[[{0}]] is an array of tables; write [{0}], with single brackets",
                        key.get_ref()
                    ),
                ));
            }
            let DeValue::Table(table) = value.get_ref() else {
                return Err(error(
                    Some(key.span().start),
                    format!(
                        "{:?} is outside any table; settings go under a table such as [coordinator], [worker], [client] or [submit]",
                        key.get_ref()
                    ),
                ));
            };
            file.add_table(text, key.get_ref(), key.span().start, table)?;
        }
        Ok(file)
    }

    /// Adds `table` as `name`, its sub-tables as `name.KEY`.
    fn add_table(
        &mut self,
        text: &str,
        name: &str,
        offset: usize,
        table: &DeTable,
    ) -> Result<(), ConfigFileError> {
        let file = self.path.clone();
        let error = |offset: usize, message: String| ConfigFileError {
            file: file.clone(),
            at: Some(position(text, offset)),
            message,
        };
        let header = header(name);
        let mut settings = BTreeMap::new();
        for (key, value) in table {
            let written = key.get_ref().to_string();
            if let DeValue::Table(sub) = value.get_ref() {
                // A pool's name is everything after `pools.`, dots included (`[pools."eu.west"]`);
                // a table under a pool's (`[pools.eu.west]`) is none, reported at its key.
                if !is_pool_table(name) {
                    self.add_table(text, &format!("{name}.{written}"), key.span().start, sub)?;
                }
                settings.insert(
                    normalize(&written),
                    Setting {
                        key: written,
                        value: Value::Table,
                        key_at: position(text, key.span().start),
                        value_at: position(text, value.span().start),
                    },
                );
                continue;
            }
            let converted = convert(value)
                .map_err(|why| error(value.span().start, format!("{header} {written}: {why}")))?;
            let setting = Setting {
                key: written.clone(),
                value: converted,
                key_at: position(text, key.span().start),
                value_at: position(text, value.span().start),
            };
            if let Some(first) = settings.insert(normalize(&written), setting) {
                return Err(error(
                    key.span().start,
                    format!(
                        "{header} {written} repeats {} (line {}): kebab and snake case name the same key",
                        first.key, first.key_at.line
                    ),
                ));
            }
        }
        self.tables.insert(
            name.to_string(),
            Table {
                at: Some(position(text, offset)),
                settings,
            },
        );
        Ok(())
    }
}

/// A TOML value as a flag takes it.
fn convert(value: &Spanned<DeValue>) -> Result<Value, String> {
    fn text(value: &DeValue) -> Option<String> {
        match value {
            DeValue::String(s) => Some(s.to_string()),
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n.to_string()),
            DeValue::Float(f) => Some(f.as_str().to_string()),
            _ => None,
        }
    }
    match value.get_ref() {
        DeValue::Boolean(b) => Ok(Value::Bool(*b)),
        DeValue::Array(items) => items
            .iter()
            .map(|item| {
                text(item.get_ref()).ok_or_else(|| {
                    "an array here holds strings or numbers, one per repeat of the flag".to_string()
                })
            })
            .collect::<Result<_, _>>()
            .map(Value::List),
        DeValue::Datetime(_) => {
            Err("a date is not a setting here; durations are strings such as \"30s\"".into())
        }
        DeValue::Table(_) => Ok(Value::Table),
        other => text(other)
            .map(Value::Text)
            .ok_or_else(|| "not a value a flag takes".to_string()),
    }
}

/// Line and column (in characters), from 1, of byte `offset` of `text`.
fn position(text: &str, offset: usize) -> Position {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: text[line_start..offset].chars().count() + 1,
    }
}

/// The flags a table takes.
#[derive(Debug, Default)]
struct TableSchema {
    /// By long name and alias.
    keys: BTreeMap<String, Arg>,
}

/// The tables of the programs given, and what each takes.
#[derive(Debug, Default)]
struct Schemas {
    tables: BTreeMap<String, TableSchema>,
    /// The programs' top-level tables, named first when a key belongs elsewhere.
    programs: Vec<String>,
    /// What `[pools.NAME]` takes, when a program has commands that name a pool.
    pools: Option<TableSchema>,
}

/// Arguments that the file may set: those with a long name, but not --help, --version or
/// --config.
fn settable(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|a| {
        a.get_long().is_some()
            && !matches!(a.get_id().as_str(), "help" | "version" | CONFIG_FLAG)
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

fn names(arg: &Arg) -> impl Iterator<Item = String> + '_ {
    arg.get_long()
        .into_iter()
        .chain(arg.get_all_aliases().unwrap_or_default())
        .map(str::to_string)
}

impl Schemas {
    fn new(programs: &[Program]) -> Schemas {
        let mut schemas = Schemas::default();
        for program in programs {
            let mut command = with_config_flag(program.command.clone());
            command.build();
            let mut top = TableSchema::default();
            add_args(&mut top, settable(&command));
            schemas.add_subcommands(&command, "", program.shared, &mut top);
            schemas.tables.insert(program.table.to_string(), top);
            schemas.programs.push(program.table.to_string());
        }
        schemas
    }

    fn add_subcommands(
        &mut self,
        command: &Command,
        prefix: &str,
        shared: &[&str],
        top: &mut TableSchema,
    ) {
        for sub in command.get_subcommands() {
            let name = format!("{prefix}{}", sub.get_name());
            let mut table = TableSchema::default();
            add_args(&mut table, settable(sub));
            add_args(
                top,
                settable(sub).filter(|a| a.get_long().is_some_and(|l| shared.contains(&l))),
            );
            if sub.get_arguments().any(|a| a.get_id() == POOL_ARG) {
                let pools = self.pools.get_or_insert_with(TableSchema::default);
                add_args(
                    pools,
                    settable(sub).filter(|a| {
                        a.get_id() != POOL_ARG
                            && !a.get_long().is_some_and(|l| shared.contains(&l))
                            && !a.is_global_set()
                    }),
                );
            }
            self.add_subcommands(sub, &format!("{name}."), shared, top);
            self.tables.insert(name, table);
        }
    }

    /// What the table `name` takes; None for a table of another program, or none at all.
    fn table(&self, name: &str) -> Option<&TableSchema> {
        if let Some(t) = self.tables.get(name) {
            return Some(t);
        }
        if is_pool_table(name) {
            return self.pools.as_ref();
        }
        None
    }

    /// The tables, beside `except`, that take `key`.
    fn tables_taking(&self, key: &str, except: &str) -> Vec<String> {
        let mut found: Vec<(bool, String)> = self
            .tables
            .iter()
            .filter(|(name, t)| name.as_str() != except && t.keys.contains_key(key))
            .map(|(name, _)| (!self.programs.contains(name), format!("[{name}]")))
            .collect();
        found.sort();
        let mut found: Vec<String> = found.into_iter().map(|(_, name)| name).collect();
        if self
            .pools
            .as_ref()
            .is_some_and(|p| p.keys.contains_key(key))
            && !except.starts_with("pools.")
        {
            found.push("[pools.NAME]".into());
        }
        // A flag every CLI command has (--coordinator) would list them all.
        if found.len() > 4 {
            let more = found.len() - 3;
            found.truncate(3);
            found.push(format!("{more} more"));
        }
        found
    }
}

fn add_args<'a>(table: &mut TableSchema, args: impl Iterator<Item = &'a Arg>) {
    for arg in args {
        for name in names(arg) {
            table.keys.entry(name).or_insert_with(|| arg.clone());
        }
    }
}

/// What a flag takes, for messages.
fn expected(arg: &Arg) -> String {
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => "true or false".into(),
        ArgAction::Count => "a number".into(),
        action => {
            let one = match arg.get_value_parser().possible_values() {
                Some(values) => {
                    let values: Vec<String> =
                        values.map(|v| format!("{:?}", v.get_name())).collect();
                    format!("one of {}", values.join(", "))
                }
                None => {
                    let name = arg
                        .get_value_names()
                        .and_then(|n| n.first())
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "VALUE".into());
                    format!("a string ({name})")
                }
            };
            if matches!(action, ArgAction::Append) {
                format!("{one}, or an array of them")
            } else {
                one
            }
        }
    }
}

/// Whether `value` has the shape `arg` takes.
fn fits(arg: &Arg, value: &Value) -> bool {
    match (arg.get_action(), value) {
        (ArgAction::SetTrue | ArgAction::SetFalse, Value::Bool(_)) => true,
        (ArgAction::Count, Value::Text(n)) => n.parse::<u8>().is_ok(),
        (ArgAction::Set | ArgAction::Append, Value::Text(_)) => true,
        (ArgAction::Append, Value::List(_)) => true,
        _ => false,
    }
}

/// The closest of `candidates` to `key`, if close enough to be a likely typo.
fn nearest<'a>(key: &str, candidates: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    candidates
        .map(|c| (distance(key, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) || c.contains(key) || key.contains(c.as_str()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            previous = here;
        }
    }
    row[b.len()]
}

impl ConfigFile {
    fn error(&self, at: Option<Position>, message: String) -> ConfigFileError {
        ConfigFileError {
            file: self.path.clone(),
            at,
            message,
        }
    }

    /// Every table is one a program reads, every key of the programs' tables one of its flags,
    /// with a value of the shape the flag takes. Of several mistakes, the first in the file.
    fn check(&self, schemas: &Schemas) -> Result<(), ConfigFileError> {
        let mut mistakes = Vec::new();
        for (name, table) in &self.tables {
            let Some(schema) = schemas.table(name) else {
                let top = name.split('.').next().unwrap_or(name);
                // Another program's table is that program's to check; a sub-table of a known
                // table that is neither a subcommand nor a pool is reported at its key in the
                // parent table.
                if TABLES.contains(&top) || schemas.tables.contains_key(top) {
                    continue;
                }
                let mut all: BTreeSet<String> = TABLES.iter().map(|t| t.to_string()).collect();
                all.extend(schemas.tables.keys().cloned());
                let hint = nearest(top, all.iter())
                    .map(|n| format!("did you mean [{n}]? "))
                    .unwrap_or_default();
                mistakes.push(self.error(
                    table.at,
                    format!(
                        "unknown table [{top}]; {hint}tables: {}, and [pools.NAME]",
                        all.iter()
                            .map(|t| format!("[{t}]"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
                continue;
            };
            let header = header(name);
            for (key, setting) in &table.settings {
                if setting.value == Value::Table
                    && !is_pool_table(name)
                    && schemas.table(&format!("{name}.{}", setting.key)).is_some()
                {
                    continue;
                }
                let Some(arg) = schema.keys.get(key) else {
                    mistakes.push(self.unknown_key(schemas, name, schema, setting, key));
                    continue;
                };
                if !fits(arg, &setting.value) {
                    mistakes.push(self.error(
                        Some(setting.value_at),
                        format!(
                            "{header} {}: expected {}, got {}",
                            setting.key,
                            expected(arg),
                            setting.value.kind()
                        ),
                    ));
                }
            }
        }
        match mistakes
            .into_iter()
            .min_by_key(|e| e.at.map(|p| (p.line, p.column)))
        {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    fn unknown_key(
        &self,
        schemas: &Schemas,
        name: &str,
        schema: &TableSchema,
        setting: &Setting,
        key: &str,
    ) -> ConfigFileError {
        let header = header(name);
        let mut message = if key == CONFIG_FLAG {
            format!(
                "{header} {}: a config file cannot name another",
                setting.key
            )
        } else if setting.value == Value::Table && is_pool_table(name) {
            let pool = &name[POOLS.len() + 1..];
            return self.error(
                Some(setting.key_at),
                format!(
                    "[{name}.{0}] is not a table proxyfleet reads; a pool name with a dot is quoted: [{POOLS}.\"{pool}.{0}\"]",
                    setting.key
                ),
            );
        } else if setting.value == Value::Table {
            format!("[{name}.{}] is not a table proxyfleet reads", setting.key)
        } else {
            format!("unknown key {:?} in {header}", setting.key)
        };
        let elsewhere = schemas.tables_taking(key, name);
        if !elsewhere.is_empty() && key != CONFIG_FLAG {
            message.push_str(&format!("; {key} belongs in {}", elsewhere.join(", ")));
            return self.error(Some(setting.key_at), message);
        } else if let Some(near) = nearest(key, schema.keys.keys()) {
            message.push_str(&format!("; did you mean {near}?"));
            return self.error(Some(setting.key_at), message);
        }
        let mut accepted: Vec<&str> = schema
            .keys
            .iter()
            .filter(|(k, a)| a.get_long() == Some(k.as_str()))
            .map(|(k, _)| k.as_str())
            .collect();
        accepted.sort_unstable();
        if accepted.is_empty() {
            message.push_str(&format!("; {header} takes no keys"));
        } else {
            message.push_str(&format!("; {header} takes: {}", accepted.join(", ")));
        }
        self.error(Some(setting.key_at), message)
    }
}

/// A flag the file sets, and where.
#[derive(Debug, Clone)]
struct Applied {
    long: String,
    table: String,
    key: String,
    at: Position,
    secret: bool,
}

/// The flags to add to the command line: at the front (the top-level command's own) and at the
/// end (the subcommand's, and global ones).
#[derive(Debug, Default)]
struct Plan {
    front: Vec<OsString>,
    back: Vec<OsString>,
    applied: Vec<Applied>,
}

impl Plan {
    fn argv(&self, argv: Vec<OsString>) -> Vec<OsString> {
        let mut out = Vec::with_capacity(argv.len() + self.front.len() + self.back.len());
        let mut rest = argv.into_iter();
        out.extend(rest.next());
        out.extend(self.front.iter().cloned());
        let rest: Vec<OsString> = rest.collect();
        // Before a `--`, after which everything is a positional value.
        let end = rest.iter().position(|a| a == "--").unwrap_or(rest.len());
        out.extend(rest[..end].iter().cloned());
        out.extend(self.back.iter().cloned());
        out.extend(rest[end..].iter().cloned());
        out
    }
}

/// A setting is secret when its flag hides its environment value (tokens) or names a token.
fn is_secret(arg: &Arg) -> bool {
    arg.is_hide_env_values_set()
        || arg.get_long().is_some_and(|l| {
            (l.contains("token") || l.contains("password")) && !l.ends_with("-file")
        })
}

impl ConfigFile {
    /// Which flags the file sets for the command line `matches` of `program`: those the command
    /// line and the environment left unset, from the most specific table that has them.
    fn plan(&self, program: &Program, command: &Command, matches: &ArgMatches) -> Plan {
        // The levels of the command line, top-level command first.
        let mut levels: Vec<(String, &Command, &ArgMatches)> =
            vec![(String::new(), command, matches)];
        loop {
            let (path, cmd, m) = levels.last().expect("one level at least");
            let Some((name, sub_matches)) = m.subcommand() else {
                break;
            };
            let Some(sub) = cmd.find_subcommand(name) else {
                break;
            };
            let path = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            levels.push((path, sub, sub_matches));
        }
        let leaf = levels.len() - 1;
        let mut plan = Plan::default();
        let mut decided: HashSet<String> = HashSet::new();
        for (depth, (path, cmd, m)) in levels.iter().enumerate().rev() {
            let mut tables: Vec<String> = Vec::new();
            if depth > 0 {
                if let Some(pool) = self.pool_of(path, cmd, m) {
                    tables.push(format!("{POOLS}.{pool}"));
                }
                tables.push(path.clone());
            }
            tables.push(program.table.to_string());
            for arg in settable(cmd) {
                let id = arg.get_id().as_str();
                if !decided.insert(id.to_string()) {
                    continue;
                }
                if given(m, id) {
                    continue;
                }
                // A file value would clash with a conflicting flag the user gave: theirs wins.
                if conflicts_with_given(cmd, arg, m) {
                    continue;
                }
                let long = arg.get_long().expect("settable args have a long name");
                // The shared flags go to the subcommand that runs, which has them when it uses
                // them; a copy of one before the subcommand (the CLI's `--coordinator URL
                // health`) is for the command line only.
                if depth == 0 && leaf > 0 && program.shared.contains(&long) && !arg.is_global_set()
                {
                    continue;
                }
                let found = tables.iter().find_map(|table| {
                    let in_top = table == program.table && depth > 0;
                    if in_top && !program.shared.contains(&long) && !arg.is_global_set() {
                        return None;
                    }
                    let settings = &self.tables.get(table)?.settings;
                    names(arg)
                        .find_map(|n| settings.get(&n))
                        .filter(|s| s.value != Value::Table)
                        .map(|s| (table, s))
                });
                let Some((table, setting)) = found else {
                    continue;
                };
                let tokens = self.tokens(arg, long, &setting.value);
                // The top-level command's own flags go before any subcommand; the others (and
                // global ones) at the end, which is the deepest subcommand's place. Flags of a
                // subcommand between the two would go astray there: no program has one.
                if depth == 0 && (leaf == 0 || !arg.is_global_set()) {
                    plan.front.extend(tokens);
                } else {
                    plan.back.extend(tokens);
                }
                plan.applied.push(Applied {
                    long: long.to_string(),
                    table: table.clone(),
                    key: setting.key.clone(),
                    at: setting.value_at,
                    secret: is_secret(arg),
                });
            }
        }
        plan
    }

    /// The pool a command names, when it has a pool argument: from the command line or the
    /// environment, else its table, else the argument's default.
    fn pool_of(&self, path: &str, cmd: &Command, m: &ArgMatches) -> Option<String> {
        let arg = cmd.get_arguments().find(|a| a.get_id() == POOL_ARG)?;
        if !given(m, POOL_ARG) {
            let from_file = self
                .tables
                .get(path)
                .and_then(|t| t.settings.get(POOL_ARG))
                .and_then(|s| match &s.value {
                    Value::Text(t) => Some(t.clone()),
                    _ => None,
                });
            if from_file.is_some() {
                return from_file;
            }
        }
        if let Ok(Some(mut raw)) = m.try_get_raw(POOL_ARG)
            && let Some(v) = raw.next()
        {
            return Some(v.to_string_lossy().into_owned());
        }
        arg.get_default_values()
            .first()
            .map(|v| v.to_string_lossy().into_owned())
    }

    /// The command-line words for `value` of `arg`.
    fn tokens(&self, arg: &Arg, long: &str, value: &Value) -> Vec<OsString> {
        let flag = || OsString::from(format!("--{long}"));
        let with = |v: &str| {
            let mut token = OsString::from(format!("--{long}="));
            token.push(self.resolve(arg, v));
            token
        };
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, Value::Bool(true)) | (ArgAction::SetFalse, Value::Bool(false)) => {
                vec![flag()]
            }
            (ArgAction::Count, Value::Text(n)) => {
                (0..n.parse::<u8>().unwrap_or(0)).map(|_| flag()).collect()
            }
            (_, Value::Text(v)) => vec![with(v)],
            (_, Value::List(vs)) => vs.iter().map(|v| with(v)).collect(),
            _ => Vec::new(),
        }
    }

    /// A relative path value of a path flag, taken from the file's directory; other values as
    /// they are, and so are `-` (stdin) and the words a flag takes besides a path (`FILE|off`).
    fn resolve(&self, arg: &Arg, value: &str) -> OsString {
        let is_path = matches!(
            arg.get_value_hint(),
            ValueHint::AnyPath
                | ValueHint::FilePath
                | ValueHint::DirPath
                | ValueHint::ExecutablePath
        );
        let is_word = value == "-"
            || arg
                .get_value_names()
                .unwrap_or_default()
                .iter()
                .any(|n| n.as_str().split('|').skip(1).any(|word| word == value));
        if !is_path || is_word || value.is_empty() || Path::new(value).is_absolute() {
            return value.into();
        }
        self.dir.join(value).into_os_string()
    }

    /// A clap error on the final command line, pointed at the file's lines when it came from
    /// there.
    fn blame(&self, plan: &Plan, error: clap::Error) -> Failure {
        use clap::error::{ContextKind, ContextValue};
        let flag_of = |kind: ContextKind| match error.get(kind) {
            Some(ContextValue::String(s)) => s
                .split([' ', '='])
                .next()
                .and_then(|f| f.strip_prefix("--"))
                .map(str::to_string),
            _ => None,
        };
        let culprit = flag_of(ContextKind::InvalidArg)
            .and_then(|long| plan.applied.iter().find(|a| a.long == long));
        if let Some(applied) = culprit
            && matches!(
                error.kind(),
                clap::error::ErrorKind::InvalidValue | clap::error::ErrorKind::ValueValidation
            )
        {
            let why = if applied.secret {
                "invalid value (not shown)".to_string()
            } else {
                let rendered = error.render().to_string();
                let first = rendered.lines().next().unwrap_or_default();
                first.strip_prefix("error: ").unwrap_or(first).to_string()
            };
            return Failure::File(self.error(
                Some(applied.at),
                format!("{} {}: {why}", header(&applied.table), applied.key),
            ));
        }
        let notes = [
            flag_of(ContextKind::InvalidArg),
            flag_of(ContextKind::PriorArg),
        ]
        .into_iter()
        .flatten()
        .filter_map(|long| plan.applied.iter().find(|a| a.long == long))
        .map(|a| {
            format!(
                "line {}: {} {} set --{}",
                a.at.line,
                header(&a.table),
                a.key,
                a.long
            )
        })
        .collect();
        Failure::ClapWithFile {
            error,
            file: self.path.clone(),
            notes,
        }
    }
}

/// Whether the command line or the environment set a flag that conflicts with `arg`. Clap lists
/// only the conflicts an argument declares itself (`--token-file` declares one with `--token`,
/// not the reverse), so both directions are looked at.
fn conflicts_with_given(cmd: &Command, arg: &Arg, m: &ArgMatches) -> bool {
    cmd.get_arg_conflicts_with(arg)
        .iter()
        .any(|other| given(m, other.get_id().as_str()))
        || cmd.get_arguments().any(|other| {
            given(m, other.get_id().as_str())
                && cmd
                    .get_arg_conflicts_with(other)
                    .iter()
                    .any(|c| c.get_id() == arg.get_id())
        })
}

/// Whether the command line or the environment set `id`.
fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    /// A service with flags of every shape.
    #[derive(Debug, Parser)]
    #[command(name = "service")]
    struct Service {
        #[arg(long, default_value = "127.0.0.1:1")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 3)]
        max_failures: u32,
        #[arg(long)]
        allow_private_targets: bool,
        #[arg(long = "judge-url", value_delimiter = ',')]
        judge_urls: Vec<String>,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, value_delimiter = ',', value_name = "FILE|off")]
        geoip: Vec<PathBuf>,
        #[arg(long, hide_env_values = true)]
        worker_token: Option<String>,
        #[arg(long, conflicts_with = "worker_token")]
        worker_token_file: Option<PathBuf>,
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        #[arg(long, hide_env_values = true, value_parser = header_text)]
        client_token: Option<String>,
    }

    /// A token goes in a header: printable ASCII, no spaces.
    fn header_text(token: &str) -> Result<String, String> {
        if token.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(token.to_string())
        } else {
            Err("not printable ASCII".into())
        }
    }

    /// A client with global connection flags and commands, some naming a pool.
    #[derive(Debug, Parser)]
    #[command(name = "client")]
    struct Client {
        #[arg(long, global = true, default_value = "http://127.0.0.1:1")]
        coordinator: String,
        #[arg(long, global = true)]
        ca: Option<PathBuf>,
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Debug, Subcommand)]
    enum Cmd {
        Submit {
            #[arg(long, default_value = "default")]
            pool: String,
            #[arg(long, value_delimiter = ',')]
            judge: Vec<String>,
            #[arg(long, default_value_t = 1)]
            min_usable: u64,
            #[arg(long, short)]
            file: Option<PathBuf>,
            #[arg(long)]
            wait: bool,
        },
        Watch {
            job: String,
        },
    }

    fn service() -> Vec<Program> {
        vec![Program::new("coordinator", Service::command())]
    }

    fn client() -> Vec<Program> {
        vec![
            Program::new("client", Client::command()).sharing(&["coordinator", "ca"]),
            Program::new("coordinator", Service::command()),
        ]
    }

    /// A config file in a fresh directory, removed on drop.
    struct File(PathBuf);

    impl File {
        fn new(text: &str) -> File {
            let dir = std::env::temp_dir().join(format!(
                "proxyfleet-config-test-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("proxyfleet.toml");
            std::fs::write(&path, text).unwrap();
            File(path)
        }

        fn arg(&self) -> String {
            format!("--config={}", self.0.display())
        }

        fn dir(&self) -> &Path {
            self.0.parent().unwrap()
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.dir());
        }
    }

    fn service_with(text: &str, flags: &[&str]) -> Result<Service, Failure> {
        let file = File::new(text);
        let mut argv = vec!["service".to_string(), file.arg()];
        argv.extend(flags.iter().map(|f| f.to_string()));
        try_parse_from(&service(), argv)
    }

    fn client_with(text: &str, flags: &[&str]) -> Result<Client, Failure> {
        let file = File::new(text);
        let mut argv = vec!["client".to_string()];
        argv.extend(flags.iter().map(|f| f.to_string()));
        argv.push(file.arg());
        try_parse_from(&client(), argv)
    }

    /// The file error of `text` for the service: where and what.
    fn service_error(text: &str) -> (Option<Position>, String) {
        match service_with(text, &[]) {
            Err(Failure::File(e)) => {
                assert!(e.file.ends_with("proxyfleet.toml"), "{e}");
                (e.at, e.message)
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn the_file_sets_every_shape_of_flag() {
        let s = service_with(
            "[coordinator]\nlisten = \"127.0.0.1:9\"\nmax_failures = 7\nallow-private-targets = true\n\
             judge-url = [\"http://a/judge\", \"http://b/judge\"]\nlog-format = \"json\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.listen.port(), 9);
        assert_eq!(s.max_failures, 7);
        assert!(s.allow_private_targets);
        assert_eq!(s.judge_urls, ["http://a/judge", "http://b/judge"]);
        assert_eq!(s.log_format, "json");
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let text = "[coordinator]\nmax-failures = 7\njudge-url = [\"http://file/judge\"]\n";
        let s = service_with(text, &["--max-failures", "9"]).unwrap();
        assert_eq!(
            (s.max_failures, s.judge_urls.as_slice()),
            (9, ["http://file/judge".to_string()].as_slice())
        );
        let s = service_with(text, &["--judge-url", "http://flag/judge"]).unwrap();
        assert_eq!(
            (s.max_failures, s.judge_urls.as_slice()),
            (7, ["http://flag/judge".to_string()].as_slice())
        );
        let s = service_with("[coordinator]\n", &[]).unwrap();
        assert_eq!(
            (s.max_failures, s.data_dir.as_path()),
            (3, Path::new("data"))
        );
    }

    #[test]
    fn a_flag_given_beats_a_conflicting_key_of_the_file() {
        let s = service_with(
            "[coordinator]\nworker-token-file = \"token\"\n",
            &["--worker-token", "t"],
        )
        .unwrap();
        assert_eq!(
            (s.worker_token.as_deref(), s.worker_token_file),
            (Some("t"), None)
        );
    }

    #[test]
    fn a_flag_given_beats_a_key_of_the_file_it_declares_a_conflict_with() {
        // --worker-token-file declares its conflict with --worker-token, not the reverse.
        let s = service_with(
            "[coordinator]\nworker-token = \"s3cret\"\n",
            &["--worker-token-file", "/etc/token"],
        )
        .unwrap();
        assert_eq!(
            (s.worker_token.as_deref(), s.worker_token_file),
            (None, Some(PathBuf::from("/etc/token")))
        );
    }

    #[test]
    fn relative_paths_are_taken_from_the_files_directory() {
        let file = File::new(
            "[coordinator]\ndata-dir = \"state\"\ngeoip = [\"off\"]\nworker-token-file = \"/etc/token\"\n",
        );
        let s: Service = try_parse_from(&service(), ["service".to_string(), file.arg()]).unwrap();
        assert_eq!(s.data_dir, file.dir().join("state"));
        assert_eq!(
            s.geoip,
            [PathBuf::from("off")],
            "a word the flag takes is not a path"
        );
        assert_eq!(s.worker_token_file, Some(PathBuf::from("/etc/token")));
    }

    #[test]
    fn without_a_config_file_the_command_line_is_parsed_as_it_is() {
        let s: Service = try_parse_from(&service(), ["service", "--max-failures", "4"]).unwrap();
        assert_eq!(s.max_failures, 4);
        match try_parse_from::<Service, _, _>(&service(), ["service", "--max-failure", "4"]) {
            Err(Failure::Clap(e)) => assert_eq!(e.exit_code(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let (at_, message) =
            service_error("[coordinator]\nlisten = \"127.0.0.1:9\"\nmax-failures = = 3\n");
        assert_eq!(at_.map(|p| p.line), Some(3), "{message}");
        assert!(message.starts_with("not valid TOML"), "{message}");
    }

    #[test]
    fn an_unknown_key_names_its_line_and_the_nearest_key() {
        let (where_, message) = service_error("[coordinator]\n\nmax-failure = 3\n");
        assert_eq!(where_, at(3, 1));
        assert!(
            message.contains("unknown key \"max-failure\" in [coordinator]"),
            "{message}"
        );
        assert!(message.ends_with("did you mean max-failures?"), "{message}");
        // Without a near key, the keys the table takes.
        let (_, message) = service_error("[coordinator]\nzzz = 3\n");
        assert!(
            message.contains("[coordinator] takes: allow-private-targets, client-token, data-dir"),
            "{message}"
        );
    }

    #[test]
    fn a_key_in_the_wrong_table_says_where_it_belongs() {
        match client_with("[client]\nmax-failures = 3\n", &["watch", "job-1"]) {
            Err(Failure::File(e)) => {
                assert_eq!(e.at, at(2, 1));
                assert!(
                    e.message.contains("max-failures belongs in [coordinator]"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        match client_with(
            "[submit]\njudge = \"http://j/\"\n[pools.shop]\nwait = true\nmin-usable = 2\n[pools.shop.x]\n",
            &["watch", "j"],
        ) {
            Err(Failure::File(e)) => {
                assert_eq!(e.at.map(|p| p.line), Some(6), "{e}");
                assert!(e.message.contains("[pools.shop.x] is not a table"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let (where_, message) = service_error("[[coordinator]]\nlisten = \"127.0.0.1:9\"\n");
        assert_eq!(where_, at(1, 3));
        assert!(message.contains("single brackets"), "{message}");
        let (where_, message) = service_error("listen = \"127.0.0.1:9\"\n");
        assert_eq!(where_, at(1, 1));
        assert!(message.contains("outside any table"), "{message}");
    }

    #[test]
    fn an_unknown_table_is_an_error_but_other_programs_tables_are_not() {
        let (where_, message) = service_error("[coordinator]\n[wroker]\nname = \"w\"\n");
        assert_eq!(where_.map(|p| p.line), Some(2));
        assert!(message.contains("did you mean [worker]?"), "{message}");
        // The worker's and the CLI's tables are theirs to check.
        service_with(
            "[worker]\nname = \"w\"\n[submit]\nwhatever = 1\n[pools.shop]\nx = 1\n",
            &[],
        )
        .unwrap();
    }

    #[test]
    fn of_several_mistakes_the_first_in_the_file_is_reported() {
        let (where_, _) =
            service_error("[worker]\nname = 1\n[coordinator]\nzzz = 1\n[zzz]\n[aaa]\n");
        assert_eq!(where_, at(4, 1));
    }

    #[test]
    fn a_wrong_type_says_what_is_expected() {
        for (text, line, column, expected) in [
            (
                "[coordinator]\nmax-failures = [3]\n",
                2,
                16,
                "expected a string (MAX_FAILURES), got an array",
            ),
            (
                "[coordinator]\nallow-private-targets = \"yes\"\n",
                2,
                25,
                "expected true or false",
            ),
            (
                "[coordinator]\nlog-format = true\n",
                2,
                14,
                "expected one of \"text\", \"json\"",
            ),
            (
                "[coordinator]\njudge-url = { a = 1 }\n",
                2,
                13,
                "or an array of them, got a table",
            ),
            (
                "[coordinator]\nlisten = 1979-05-27\n",
                2,
                10,
                "a date is not a setting",
            ),
            (
                "[coordinator]\njudge-url = [[1]]\n",
                2,
                13,
                "strings or numbers",
            ),
        ] {
            let (where_, message) = service_error(text);
            assert_eq!(where_, at(line, column), "{text}: {message}");
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn a_value_the_flag_refuses_names_its_line() {
        let (where_, message) = service_error("[coordinator]\n\nlisten = \"nowhere\"\n");
        assert_eq!(where_, at(3, 10));
        assert!(
            message.starts_with("[coordinator] listen: invalid value 'nowhere'"),
            "{message}"
        );
    }

    #[test]
    fn a_secret_is_never_echoed() {
        // A value the flag refuses is echoed, unless the flag holds a secret.
        let (where_, message) = service_error("[coordinator]\n\nclient-token = \"s3cret word\"\n");
        assert_eq!(where_, at(3, 16));
        assert_eq!(
            message,
            "[coordinator] client-token: invalid value (not shown)"
        );
        let (_, message) = service_error("[coordinator]\nlog-format = \"s3cret\"\n");
        assert!(
            message.contains("s3cret"),
            "a value that is no secret is shown: {message}"
        );
        // Unknown keys and wrong types never show a value.
        let (_, message) = service_error("[coordinator]\nworker-tokn = \"s3cret\"\n");
        assert!(!message.contains("s3cret"), "{message}");
        let (_, message) = service_error("[coordinator]\nworker-token = [\"s3cret\"]\n");
        assert!(
            !message.contains("s3cret") && message.contains("expected"),
            "{message}"
        );
    }

    #[test]
    fn a_config_file_cannot_name_another() {
        let (where_, message) = service_error("[coordinator]\nconfig = \"other.toml\"\n");
        assert_eq!(where_, at(2, 1));
        assert!(message.contains("cannot name another"), "{message}");
    }

    #[test]
    fn two_keys_of_the_file_that_clash_are_pointed_at() {
        let text = "[coordinator]\nworker-token = \"s3cret\"\nworker-token-file = \"token\"\n";
        match service_with(text, &[]) {
            Err(Failure::ClapWithFile { error, notes, .. }) => {
                assert_eq!(error.exit_code(), 2);
                assert_eq!(notes.len(), 2, "{notes:?}");
                assert!(
                    notes
                        .iter()
                        .any(|n| n.starts_with("line 3: [coordinator] worker-token-file")),
                    "{notes:?}"
                );
                let all = format!("{} {notes:?}", error.render());
                assert!(!all.contains("s3cret"), "{all}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kebab_and_snake_case_of_one_key_clash() {
        let (where_, message) =
            service_error("[coordinator]\nmax-failures = 3\nmax_failures = 4\n");
        assert_eq!(where_.map(|p| p.line), Some(3));
        assert!(
            message.contains("repeats max-failures (line 2)"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        match try_parse_from::<Service, _, _>(
            &service(),
            ["service", "--config", "/nonexistent/p.toml"],
        ) {
            Err(Failure::File(e)) => {
                assert_eq!(e.file, Path::new("/nonexistent/p.toml"));
                assert!(e.message.contains("cannot read"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_command_reads_its_pool_then_its_table_then_the_client_table() {
        let text = "[client]\ncoordinator = \"http://file:1\"\nca = \"ca.pem\"\n\
                    [submit]\njudge = [\"http://submit/judge\"]\nmin-usable = 5\nfile = \"list.txt\"\n\
                    [pools.shop]\nmin-usable = 50\n";
        let c = client_with(text, &["submit"]).unwrap();
        assert_eq!(c.coordinator, "http://file:1");
        assert!(c.ca.unwrap().ends_with("ca.pem"));
        let Cmd::Submit {
            judge,
            min_usable,
            file,
            pool,
            wait,
        } = c.command
        else {
            panic!()
        };
        assert_eq!(
            (judge.as_slice(), min_usable, pool.as_str(), wait),
            (
                ["http://submit/judge".to_string()].as_slice(),
                5,
                "default",
                false
            )
        );
        assert!(file.unwrap().is_absolute());
        let c = client_with(text, &["submit", "--pool", "shop"]).unwrap();
        let Cmd::Submit { min_usable, .. } = c.command else {
            panic!()
        };
        assert_eq!(min_usable, 50, "the pool's table beats the command's");
        let c = client_with(
            &format!("{text}[submit.x]\n"),
            &["submit", "--pool", "shop", "--min-usable", "2"],
        );
        assert!(
            matches!(c, Err(Failure::File(_))),
            "a sub-table of a command is no table"
        );
        let c = client_with(
            text,
            &[
                "submit",
                "--pool",
                "shop",
                "--min-usable",
                "2",
                "--coordinator",
                "http://flag:1",
            ],
        )
        .unwrap();
        let Cmd::Submit { min_usable, .. } = c.command else {
            panic!()
        };
        assert_eq!((c.coordinator.as_str(), min_usable), ("http://flag:1", 2));
        let c = client_with(
            "[submit]\npool = \"shop\"\n[pools.shop]\nmin-usable = 50\n",
            &["submit"],
        )
        .unwrap();
        let Cmd::Submit { min_usable, .. } = c.command else {
            panic!()
        };
        assert_eq!(min_usable, 50, "the command's table may name the pool");
        let c = client_with(
            "[client]\ncoordinator = \"http://client:1\"\n[submit]\ncoordinator = \"http://submit:1\"\n",
            &["submit"],
        )
        .unwrap();
        assert_eq!(
            c.coordinator, "http://submit:1",
            "the command's table beats the client table"
        );
    }

    #[test]
    fn a_pool_name_with_a_dot_is_quoted_and_its_table_checked() {
        let c = client_with(
            "[submit]\nmin-usable = 5\n[pools.\"eu.west\"]\nmin-usable = 50\n",
            &["submit", "--pool", "eu.west"],
        )
        .unwrap();
        let Cmd::Submit { min_usable, .. } = c.command else {
            panic!()
        };
        assert_eq!(min_usable, 50);
        // Its keys are checked as any pool's.
        match client_with(
            "[pools.\"eu.west\"]\nmin-usabel = 50\n",
            &["submit", "--pool", "eu.west"],
        ) {
            Err(Failure::File(e)) => {
                assert_eq!(e.at, at(2, 1), "{e}");
                assert!(
                    e.message.contains(
                        "unknown key \"min-usabel\" in [pools.\"eu.west\"]; did you mean min-usable?"
                    ),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Unquoted, the dot makes a table under the pool eu: the message says to quote it.
        match client_with(
            "[pools.eu.west]\nmin-usable = 50\n",
            &["submit", "--pool", "eu.west"],
        ) {
            Err(Failure::File(e)) => {
                assert_eq!(e.at, at(1, 11), "{e}");
                assert!(e.message.contains("quoted: [pools.\"eu.west\"]"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The client with its connection flags on each command rather than global.
    #[derive(Debug, Parser)]
    #[command(name = "client")]
    struct PerCommand {
        #[command(subcommand)]
        command: PerCommandCmd,
    }

    #[derive(Debug, clap::Args)]
    struct Connection {
        #[arg(long, default_value = "http://127.0.0.1:1")]
        coordinator: String,
    }

    #[derive(Debug, Subcommand)]
    enum PerCommandCmd {
        Refresh {
            #[command(flatten)]
            connection: Connection,
            #[arg(long, default_value = "default")]
            pool: String,
            #[arg(long, default_value = "10m")]
            wait_timeout: String,
        },
    }

    #[test]
    fn connection_flags_on_each_command_still_come_from_the_client_table() {
        let file = File::new(
            "[client]\ncoordinator = \"http://file:1\"\n\
             [refresh]\nwait-timeout = \"2m\"\n[pools.x]\nwait-timeout = \"3m\"\n",
        );
        let programs = [Program::new("client", PerCommand::command()).sharing(&["coordinator"])];
        let c: PerCommand = try_parse_from(&programs, ["client", "refresh", &file.arg()]).unwrap();
        let PerCommandCmd::Refresh {
            connection,
            wait_timeout,
            ..
        } = c.command;
        assert_eq!(
            (connection.coordinator.as_str(), wait_timeout.as_str()),
            ("http://file:1", "2m")
        );
        let c: PerCommand =
            try_parse_from(&programs, ["client", &file.arg(), "refresh", "--pool", "x"]).unwrap();
        let PerCommandCmd::Refresh { wait_timeout, .. } = c.command;
        assert_eq!(wait_timeout, "3m");
        // The old name is an unknown key, with the new one suggested.
        let old = File::new("[refresh]\ntimeout = \"2m\"\n");
        match try_parse_from::<PerCommand, _, _>(
            &programs,
            ["client".to_string(), old.arg(), "refresh".into()],
        ) {
            Err(Failure::File(e)) => {
                assert!(e.message.contains("did you mean wait-timeout?"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_and_version_pass_through() {
        match try_parse_from::<Service, _, _>(&service(), ["service", "--help"]) {
            Err(Failure::Clap(e)) => assert_eq!(e.exit_code(), 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "a\nbé = 1\n";
        assert_eq!(position(text, 0), Position { line: 1, column: 1 });
        assert_eq!(position(text, 2), Position { line: 2, column: 1 });
        assert_eq!(
            position(text, text.find('=').unwrap()),
            Position { line: 2, column: 4 }
        );
    }

    #[test]
    fn nearest_finds_typos_only() {
        let keys = ["max-failures".to_string(), "listen".to_string()];
        assert_eq!(
            nearest("max-failure", keys.iter()).map(String::as_str),
            Some("max-failures")
        );
        assert_eq!(nearest("zzzzzz", keys.iter()), None);
    }
}
