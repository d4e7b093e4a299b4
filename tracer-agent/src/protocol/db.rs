//! The exchange type shared by the database and cache protocol parsers.

/// Database or cache system, as named by the OpenTelemetry `db.system.name` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DbSystem {
    Postgresql,
    Mysql,
    Mariadb,
    Redis,
}

impl DbSystem {
    pub fn as_str(self) -> &'static str {
        match self {
            DbSystem::Postgresql => "postgresql",
            DbSystem::Mysql => "mysql",
            DbSystem::Mariadb => "mariadb",
            DbSystem::Redis => "redis",
        }
    }
}

/// An error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbError {
    /// SQLSTATE (PostgreSQL), error number (MySQL/MariaDB), or the error
    /// prefix such as `ERR`/`WRONGTYPE` (Redis).
    pub code: String,
    pub message: String,
}

/// One query or command with its reply, seen from the client's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbExchange {
    pub system: DbSystem,
    /// Query text exactly as sent (SQL statement, or the Redis command with
    /// its arguments joined by spaces); sanitised later, when the span is made.
    /// For prepared statements: the statement's text.
    pub query_text: Option<String>,
    /// Operation when the protocol names it (Redis command name, e.g. `GET`);
    /// for SQL leave None: it is derived from the text.
    pub operation: Option<String>,
    /// Database name (PostgreSQL/MySQL database, Redis database index as a string) when known.
    pub namespace: Option<String>,
    pub error: Option<DbError>,
    /// Rows returned or affected, when the protocol says.
    pub rows: Option<u64>,
    /// Monotonic times (ns) of the first request segment's syscall entry, the
    /// last request segment's exit, the first response segment's entry and the
    /// last response segment's exit. 0 when unknown.
    pub req_first_enter: u64,
    pub req_last_exit: u64,
    pub resp_first_enter: u64,
    pub resp_last_exit: u64,
    /// The reply was not seen (connection closed or state lost).
    pub no_response: bool,
    /// The exchange is a statement prepared, run once and closed (MySQL
    /// `COM_STMT_PREPARE`, `COM_STMT_EXECUTE`, `COM_STMT_CLOSE`), from
    /// the prepare's start to the execution's end.
    pub with_prepare: bool,
}

impl DbExchange {
    pub fn new(system: DbSystem) -> Self {
        Self {
            system,
            query_text: None,
            operation: None,
            namespace: None,
            error: None,
            rows: None,
            req_first_enter: 0,
            req_last_exit: 0,
            resp_first_enter: 0,
            resp_last_exit: 0,
            no_response: false,
            with_prepare: false,
        }
    }
}
