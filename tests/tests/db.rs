//! Database and cache clients: PostgreSQL (psql, psycopg, pgbench), MariaDB
//! (mariadb CLI, pymysql) and Redis (redis-cli, redis-benchmark, raw RESP).
//!
//! Each test starts its own server on a free port and an agent restricted
//! to that port, drives real clients, stops the agent and checks one CLIENT
//! span per query or command — exact counts, names and attributes — and that
//! the database servers themselves produce no spans.
//!
//! Run as root with `TRACER_AGENT_BIN` pointing at the agent binary.

use std::io::{BufRead, BufReader, Read};

use tracer_tests::db::*;
use tracer_tests::*;

fn pg_span<'a>(name: &'a str, op: &'a str, coll: Option<&'a str>, query: &'a str) -> DbSpan<'a> {
    DbSpan {
        name,
        system: "postgresql",
        operation: Some(op),
        collection: coll,
        namespace: Some("postgres"),
        query,
        ..Default::default()
    }
}

fn maria_span<'a>(
    name: &'a str,
    op: &'a str,
    coll: Option<&'a str>,
    ns: Option<&'a str>,
    query: &'a str,
) -> DbSpan<'a> {
    DbSpan {
        name,
        system: "mariadb",
        operation: Some(op),
        collection: coll,
        namespace: ns,
        query,
        ..Default::default()
    }
}

fn redis_span<'a>(name: &'a str, query: &'a str) -> DbSpan<'a> {
    DbSpan {
        name,
        system: "redis",
        operation: Some(name),
        collection: None,
        namespace: Some("0"),
        query,
        ..Default::default()
    }
}

fn rows(mut s: DbSpan, n: i64) -> DbSpan {
    s.rows = Some(Some(n));
    s
}

/// Data-changing statements report no returned rows (affected rows are not
/// returned rows).
fn affected(mut s: DbSpan, _n: i64) -> DbSpan {
    s.rows = Some(None);
    s
}

fn failed<'a>(mut s: DbSpan<'a>, code: &'a str) -> DbSpan<'a> {
    s.error = Some(code);
    s.rows = Some(None);
    s
}

fn in_ns<'a>(mut s: DbSpan<'a>, ns: &'a str) -> DbSpan<'a> {
    s.namespace = Some(ns);
    s
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// psql with one `-c` per statement: every statement is one span, with its
/// literals sanitised, its table as the collection and `postgres` (the
/// database of the startup message) as the namespace; a failing statement
/// is an ERROR span with its SQLSTATE and does not disturb the next ones.
#[test]
fn postgres_psql_statements() {
    let _serial = serial();
    agent_bin();
    let pg = Postgres::start();
    let mut agent = DbAgent::start("postgres_psql_statements", pg.port(), |b| b);

    let statements = [
        "CREATE TABLE t (id integer PRIMARY KEY, name text)",
        "INSERT INTO t VALUES (42, 'hello')",
        "INSERT INTO t VALUES (7, 'it''s'), (8, 'x')",
        "SELECT * FROM t WHERE id = 42",
        "SELECT name FROM t WHERE id IN (7, 8, 42) ORDER BY id",
        "SELECT * FROM nosuch",
        "UPDATE t SET name = 'x' WHERE id = 42",
        "DELETE   FROM t\n   WHERE id = 42",
        "SELECT count(*) FROM t",
    ];
    let run = pg.psql("postgres", &statements);
    // psql's exit status is that of the last statement; the failure shows
    // on stderr.
    run.assert_success("psql");
    assert!(run.stderr().contains("relation \"nosuch\" does not exist"), "psql stderr:\n{}", run.stderr());
    let out = run.stdout();
    assert!(out.contains("it's") && out.contains("DELETE 1"), "psql output:\n{out}");

    let spans = agent.finish(statements.len());
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    assert_eq!(spans.len(), statements.len(), "one span per statement\n{ctx}");
    assert_client_process(&spans, "psql", run.pid, &ctx);
    let want = [
        // DDL and DML report no returned rows.
        DbSpan {
            rows: Some(None),
            ..pg_span("CREATE t", "CREATE", Some("t"), "CREATE TABLE t (id integer PRIMARY KEY, name text)")
        },
        affected(pg_span("INSERT t", "INSERT", Some("t"), "INSERT INTO t VALUES (?, ?)"), 1),
        affected(pg_span("INSERT t", "INSERT", Some("t"), "INSERT INTO t VALUES (?, ?), (?, ?)"), 2),
        rows(pg_span("SELECT t", "SELECT", Some("t"), "SELECT * FROM t WHERE id = ?"), 1),
        rows(pg_span("SELECT t", "SELECT", Some("t"), "SELECT name FROM t WHERE id IN (?) ORDER BY id"), 3),
        failed(pg_span("SELECT nosuch", "SELECT", Some("nosuch"), "SELECT * FROM nosuch"), "42P01"),
        affected(pg_span("UPDATE t", "UPDATE", Some("t"), "UPDATE t SET name = ? WHERE id = ?"), 1),
        affected(pg_span("DELETE t", "DELETE", Some("t"), "DELETE FROM t WHERE id = ?"), 1),
        rows(pg_span("SELECT t", "SELECT", Some("t"), "SELECT count(*) FROM t"), 1),
    ];
    assert_db_sequence(&spans, &want, pg.port(), &ctx);
}

/// The namespace is the database named in the startup message, and the user
/// name when the client names no database; a statement without a table is
/// named after its operation alone.
#[test]
fn postgres_namespace_and_operation_only_names() {
    let _serial = serial();
    agent_bin();
    let pg = Postgres::start();
    pg.setup_sql("postgres", "CREATE DATABASE shop");
    pg.setup_sql("postgres", "CREATE ROLE reporter LOGIN");
    pg.setup_sql("postgres", "CREATE DATABASE reporter OWNER reporter");
    let mut agent = DbAgent::start("postgres_namespace_and_operation_only_names", pg.port(), |b| b);

    let shop = pg.psql("shop", &["SELECT 1", "BEGIN", "COMMIT"]);
    shop.assert_success("psql -d shop");
    // No -d: the server takes the user name as the database.
    let reporter = run_client(
        std::process::Command::new(require_program("psql"))
            .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "reporter", "-X"])
            .args(["-c", "SELECT current_database()"]),
        "psql -U reporter",
    );
    reporter.assert_success("psql -U reporter");
    assert!(reporter.stdout().contains("reporter"), "{}", reporter.stdout());

    let spans = agent.finish(4);
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    assert_eq!(spans.len(), 4, "one span per statement\n{ctx}");
    let by_pid = |pid: u32| -> Vec<ReceivedSpan> {
        spans.iter().filter(|s| s.resource_int("process.pid") == Some(pid as i64)).cloned().collect()
    };
    let shop_spans = by_pid(shop.pid);
    assert_client_process(&shop_spans, "psql", shop.pid, &ctx);
    let want = [
        rows(in_ns(pg_span("SELECT", "SELECT", None, "SELECT ?"), "shop"), 1),
        in_ns(pg_span("BEGIN", "BEGIN", None, "BEGIN"), "shop"),
        in_ns(pg_span("COMMIT", "COMMIT", None, "COMMIT"), "shop"),
    ];
    assert_db_sequence(&shop_spans, &want, pg.port(), &ctx);
    let reporter_spans = by_pid(reporter.pid);
    assert_client_process(&reporter_spans, "psql", reporter.pid, &ctx);
    let want = [rows(in_ns(pg_span("SELECT", "SELECT", None, "SELECT current_database()"), "reporter"), 1)];
    assert_db_sequence(&reporter_spans, &want, pg.port(), &ctx);
}

/// `--db-full-query-text`: the query text is reported exactly as sent.
#[test]
fn postgres_full_query_text() {
    let _serial = serial();
    agent_bin();
    let pg = Postgres::start();
    pg.setup_sql("postgres", "CREATE TABLE t (id integer, name text)");
    let mut agent = DbAgent::start("postgres_full_query_text", pg.port(), |b| b.arg("--db-full-query-text"));
    let statements =
        ["INSERT INTO t VALUES (42, 'hello'), (43, 'world')", "SELECT name FROM t WHERE id IN (42, 43)   ORDER BY id"];
    let run = pg.psql("postgres", &statements);
    run.assert_success("psql");

    let spans = agent.finish(2);
    let ctx = agent.context(&spans);
    assert_eq!(spans.len(), 2, "{ctx}");
    assert_client_process(&spans, "psql", run.pid, &ctx);
    let want = [
        pg_span("INSERT t", "INSERT", Some("t"), statements[0]),
        rows(pg_span("SELECT t", "SELECT", Some("t"), statements[1]), 2),
    ];
    assert_db_sequence(&spans, &want, pg.port(), &ctx);
}

const PSYCOPG_SCRIPT: &str = r#"
import sys
import psycopg
from psycopg import errors

port = int(sys.argv[1])
with psycopg.connect(host="127.0.0.1", port=port, user="postgres",
                     dbname="postgres", autocommit=True) as conn:
    # Named server-side prepared statement: one Parse, then Bind/Execute.
    for i in range(5):
        rows = conn.execute("SELECT id, name FROM items WHERE id = %s", (i,),
                            prepare=True).fetchall()
        assert rows == [(i, "item%d" % i)], rows
    # Unnamed statements of the extended protocol, never prepared.
    conn.prepare_threshold = None
    for i in range(3):
        cur = conn.execute("UPDATE items SET name = %s WHERE id = %s", ("renamed", i))
        assert cur.rowcount == 1
    try:
        conn.execute("SELECT * FROM missing WHERE id = %s", (1,))
    except errors.UndefinedTable:
        pass
    else:
        sys.exit("the query on a missing table succeeded")
    # The connection is still usable after the error.
    n = conn.execute("SELECT count(*) FROM items WHERE name = %s", ("renamed",)).fetchone()[0]
    assert n == 3, n
print("ok")
"#;

/// psycopg with the extended protocol: a server-side prepared statement run
/// five times gives five spans carrying the statement's text (`$n`
/// placeholders are kept), unnamed statements one span each, and an error
/// during Parse fails the Execute that would have run it.
#[test]
fn postgres_psycopg_extended_protocol() {
    let _serial = serial();
    agent_bin();
    let python = python_with(&["psycopg"]);
    let pg = Postgres::start();
    pg.setup_sql("postgres", "CREATE TABLE items (id integer PRIMARY KEY, name text)");
    pg.setup_sql("postgres", "INSERT INTO items SELECT g, 'item' || g FROM generate_series(0, 9) g");
    let mut agent = DbAgent::start("postgres_psycopg_extended_protocol", pg.port(), |b| b);
    let run = run_python(&python, PSYCOPG_SCRIPT, &[pg.port().to_string()]);
    assert_eq!(run.stdout().trim(), "ok");

    let spans = agent.finish(10);
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    assert_eq!(spans.len(), 10, "one span per execution\n{ctx}");
    assert_client_process(&spans, "python3", run.pid, &ctx);
    let select = rows(pg_span("SELECT items", "SELECT", Some("items"), "SELECT id, name FROM items WHERE id = $1"), 1);
    let update = pg_span("UPDATE items", "UPDATE", Some("items"), "UPDATE items SET name = $1 WHERE id = $2");
    let mut want = vec![select.clone(); 5];
    want.extend(vec![update; 3]);
    want.push(failed(
        pg_span("SELECT missing", "SELECT", Some("missing"), "SELECT * FROM missing WHERE id = $1"),
        "42P01",
    ));
    want.push(rows(pg_span("SELECT items", "SELECT", Some("items"), "SELECT count(*) FROM items WHERE name = $1"), 1));
    assert_db_sequence(&spans, &want, pg.port(), &ctx);
}

/// pgbench's check of how pgbench_accounts is partitioned, sanitised
/// (the table name and the ordinals of GROUP BY/ORDER BY/LIMIT are literals).
const PGBENCH_PARTITION_QUERY: &str = "select o.n, p.partstrat, pg_catalog.count(i.inhparent) \
    from pg_catalog.pg_class as c \
    join pg_catalog.pg_namespace as n on (n.oid = c.relnamespace) \
    cross join lateral (select pg_catalog.array_position(pg_catalog.current_schemas(true), n.nspname)) as o(n) \
    left join pg_catalog.pg_partitioned_table as p on (p.partrelid = c.oid) \
    left join pg_catalog.pg_inherits as i on (c.oid = i.inhparent) \
    where c.relname = ? and o.n is not null group by ?, ? order by ? asc limit ?";

/// pgbench `-M prepared -S`: 20 transactions are 20 spans of the prepared
/// SELECT, plus the catalogue queries pgbench runs once before the test.
#[test]
fn postgres_pgbench_prepared() {
    let _serial = serial();
    agent_bin();
    let pg = Postgres::start();
    // Initialised before the agent starts: its COPY and DDL are not traced.
    pg.pgbench("postgres", &["-i", "-q", "-s", "1"]);
    let mut agent = DbAgent::start("postgres_pgbench_prepared", pg.port(), |b| b);
    let run = pg.pgbench("postgres", &["-n", "-M", "prepared", "-S", "-t", "20", "-c", "1"]);
    let out = run.stdout();
    assert!(out.contains("number of transactions actually processed: 20/20"), "pgbench output:\n{out}");

    // pgbench sends the statement with its terminating semicolon.
    const QUERY: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    let spans = agent.finish(20);
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    assert_client_process(&spans, "pgbench", run.pid, &ctx);
    let selects = with_query(&spans, QUERY);
    assert_eq!(selects.len(), 20, "one span per transaction\n{ctx}");
    let want = rows(pg_span("SELECT pgbench_accounts", "SELECT", Some("pgbench_accounts"), QUERY), 1);
    for s in &selects {
        assert_db_span(s, &want, pg.port());
    }
    // Before the run pgbench reads the scale and checks the partitioning
    // of pgbench_accounts, on a connection of its own.
    let others: Vec<ReceivedSpan> =
        spans.iter().filter(|s| s.attr_str("db.query.text").as_deref() != Some(QUERY)).cloned().collect();
    let want = [
        rows(
            pg_span(
                "SELECT pgbench_branches",
                "SELECT",
                Some("pgbench_branches"),
                "select count(*) from pgbench_branches",
            ),
            1,
        ),
        rows(pg_span("SELECT", "SELECT", None, PGBENCH_PARTITION_QUERY), 1),
    ];
    assert_db_sequence(&others, &want, pg.port(), &ctx);
    assert_eq!(spans.len(), 22, "{ctx}");
}

// ---------------------------------------------------------------------------
// MariaDB

/// The `mariadb` CLI sends every statement of `-e` as its own COM_QUERY
/// (in batch mode nothing else, apart from the `SELECT DATABASE()` it runs
/// for `use`): one span each, `mariadb` as the system
/// (from the server's greeting), the `-D` database as the namespace, `USE`
/// (sent as COM_INIT_DB, no span) switching it for later statements, and
/// MariaDB error numbers on failures.
#[test]
fn mariadb_cli_statements() {
    let _serial = serial();
    agent_bin();
    let db = MariaDb::start();
    db.setup_sql(
        "CREATE DATABASE shop; CREATE DATABASE other; \
         CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(50), qty INT); \
         CREATE TABLE other.things (id INT)",
    );
    let mut agent = DbAgent::start("mariadb_cli_statements", db.port(), |b| b);
    let sql = "INSERT INTO orders VALUES (1, 'apple', 3), (2, 'pear', 5); \
               SELECT item FROM orders WHERE id = 1; \
               UPDATE orders SET qty = 10 WHERE item IN ('apple', 'pear'); \
               DELETE FROM orders WHERE id = 2; \
               SELECT   qty\n FROM orders; \
               USE other; \
               SELECT count(*) FROM things";
    let run = db.cli(Some("shop"), &[], sql);
    run.assert_success("mariadb");
    // The CLI stops a `-e` batch at the first error: the failing statement
    // gets a run of its own.
    let failing = db.cli(Some("shop"), &[], "SELECT * FROM nosuch");
    failing.assert_failed_with("mariadb", "ERROR 1146");

    let spans = agent.finish(8);
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    assert_eq!(spans.len(), 8, "one span per query sent\n{ctx}");
    let of_pid = |pid: u32| -> Vec<ReceivedSpan> {
        spans.iter().filter(|s| s.resource_int("process.pid") == Some(pid as i64)).cloned().collect()
    };
    let shop = Some("shop");
    let mine = of_pid(run.pid);
    assert_client_process(&mine, "mariadb", run.pid, &ctx);
    let want = [
        affected(
            maria_span(
                "INSERT orders",
                "INSERT",
                Some("orders"),
                shop,
                "INSERT INTO orders VALUES (?, ?, ?), (?, ?, ?)",
            ),
            2,
        ),
        rows(maria_span("SELECT orders", "SELECT", Some("orders"), shop, "SELECT item FROM orders WHERE id = ?"), 1),
        affected(
            maria_span("UPDATE orders", "UPDATE", Some("orders"), shop, "UPDATE orders SET qty = ? WHERE item IN (?)"),
            2,
        ),
        affected(maria_span("DELETE orders", "DELETE", Some("orders"), shop, "DELETE FROM orders WHERE id = ?"), 1),
        rows(maria_span("SELECT orders", "SELECT", Some("orders"), shop, "SELECT qty FROM orders"), 1),
        // The CLI's `use` first asks the server for its current database,
        // then sends COM_INIT_DB.
        rows(maria_span("SELECT", "SELECT", None, shop, "SELECT DATABASE()"), 1),
        rows(maria_span("SELECT things", "SELECT", Some("things"), Some("other"), "SELECT count(*) FROM things"), 1),
    ];
    assert_db_sequence(&mine, &want, db.port(), &ctx);
    let theirs = of_pid(failing.pid);
    assert_client_process(&theirs, "mariadb", failing.pid, &ctx);
    let want = [failed(maria_span("SELECT nosuch", "SELECT", Some("nosuch"), shop, "SELECT * FROM nosuch"), "1146")];
    assert_db_sequence(&theirs, &want, db.port(), &ctx);
}

const PYMYSQL_SCRIPT: &str = r#"
import struct
import sys
import pymysql

port = int(sys.argv[1])
conn = pymysql.connect(host="127.0.0.1", port=port, user="root",
                       database="shop", autocommit=True)
with conn.cursor() as cur:
    # Parameters are interpolated on the client: plain COM_QUERY.
    cur.execute("SELECT item, qty FROM orders WHERE id = %s", (1,))
    assert cur.fetchall() == (("apple", 3),)
    cur.execute("UPDATE orders SET qty = %s WHERE item = %s", (7, "apple"))
    assert cur.rowcount == 1
    try:
        cur.execute("SELECT * FROM nosuch WHERE id = %s", (1,))
    except pymysql.err.ProgrammingError as e:
        assert e.args[0] == 1146, e
    else:
        sys.exit("the query on a missing table succeeded")
    # COM_INIT_DB: no span of its own, but a new namespace.
    conn.select_db("other")
    cur.execute("SELECT count(*) FROM things")
    assert cur.fetchall() == ((0,),)

# The binary protocol: COM_STMT_PREPARE, then COM_STMT_EXECUTE three times.
conn.select_db("shop")
COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_CLOSE = 0x16, 0x17, 0x19
MYSQL_TYPE_LONGLONG = 8

def is_eof(data):
    return data[:1] == b"\xfe" and len(data) < 9

conn._execute_command(COM_STMT_PREPARE, "SELECT item FROM orders WHERE id = ?")
ok = conn._read_packet().get_all_data()
assert ok[0] == 0, ok
stmt_id, ncols, nparams = struct.unpack_from("<IHH", ok, 1)
assert nparams == 1, nparams
for part in (nparams, ncols):
    if part:
        for _ in range(part):
            conn._read_packet()
        assert is_eof(conn._read_packet().get_all_data())

def execute(value):
    body = struct.pack("<IBI", stmt_id, 0, 1)
    body += b"\x00" + b"\x01" + struct.pack("<BB", MYSQL_TYPE_LONGLONG, 0)
    body += struct.pack("<q", value)
    conn._execute_command(COM_STMT_EXECUTE, body)
    first = conn._read_packet().get_all_data()
    assert first[0] not in (0x00, 0xff), first
    for _ in range(first[0]):
        conn._read_packet()
    assert is_eof(conn._read_packet().get_all_data())
    rows = 0
    while not is_eof(conn._read_packet().get_all_data()):
        rows += 1
    return rows

assert [execute(v) for v in (1, 2, 1)] == [1, 0, 1]
conn._execute_command(COM_STMT_CLOSE, struct.pack("<I", stmt_id))
conn.close()
print("ok")
"#;

/// pymysql: parameters are interpolated on the client, so the sanitised text
/// has `?` where the values were; `SET NAMES` at connect is a span too;
/// `select_db` (COM_INIT_DB) changes the namespace without a span; the
/// binary protocol gives one span for the prepare and one per execute, with
/// the statement's text.
#[test]
fn mariadb_pymysql_text_and_binary_protocol() {
    let _serial = serial();
    agent_bin();
    let python = python_with(&["pymysql"]);
    let db = MariaDb::start();
    db.setup_sql(
        "CREATE DATABASE shop; CREATE DATABASE other; \
         CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(50), qty INT); \
         INSERT INTO shop.orders VALUES (1, 'apple', 3); \
         CREATE TABLE other.things (id INT)",
    );
    let mut agent = DbAgent::start("mariadb_pymysql_text_and_binary_protocol", db.port(), |b| b);
    let run = run_python(&python, PYMYSQL_SCRIPT, &[db.port().to_string()]);
    assert_eq!(run.stdout().trim(), "ok");

    let spans = agent.finish(9);
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    assert_client_process(&spans, "python3", run.pid, &ctx);
    let shop = Some("shop");
    let stmt = "SELECT item FROM orders WHERE id = ?";
    let want = [
        maria_span("SET", "SET", None, shop, "SET NAMES utf8mb4"),
        rows(
            maria_span("SELECT orders", "SELECT", Some("orders"), shop, "SELECT item, qty FROM orders WHERE id = ?"),
            1,
        ),
        maria_span("UPDATE orders", "UPDATE", Some("orders"), shop, "UPDATE orders SET qty = ? WHERE item = ?"),
        failed(
            maria_span("SELECT nosuch", "SELECT", Some("nosuch"), shop, "SELECT * FROM nosuch WHERE id = ?"),
            "1146",
        ),
        rows(maria_span("SELECT things", "SELECT", Some("things"), Some("other"), "SELECT count(*) FROM things"), 1),
        maria_span("SELECT orders", "SELECT", Some("orders"), shop, stmt),
        rows(maria_span("SELECT orders", "SELECT", Some("orders"), shop, stmt), 1),
        rows(maria_span("SELECT orders", "SELECT", Some("orders"), shop, stmt), 0),
        rows(maria_span("SELECT orders", "SELECT", Some("orders"), shop, stmt), 1),
    ];
    assert_db_sequence(&spans, &want, db.port(), &ctx);
}

// ---------------------------------------------------------------------------
// Redis

/// redis-cli, one command per run: the command and its key in the text,
/// other arguments as `?`; an error reply is an ERROR span with its prefix;
/// `-n 3` selects database 3 for the commands after SELECT.
#[test]
fn redis_cli_commands_and_errors() {
    let _serial = serial();
    agent_bin();
    let server = Redis::start();
    let mut agent = DbAgent::start("redis_cli_commands_and_errors", server.port(), |b| b);
    let mut pids = Vec::new();
    for (args, reply) in [
        (&["SET", "foo", "bar"][..], "OK"),
        (&["GET", "foo"][..], "bar"),
        (&["INCR", "foo"][..], "ERR value is not an integer or out of range"),
        (&["LPUSH", "foo", "x"][..], "WRONGTYPE"),
        (&["-n", "3", "SET", "k3", "v"][..], "OK"),
    ] {
        let run = server.cli(args);
        run.assert_success(&format!("redis-cli {args:?}"));
        assert!(run.stdout().contains(reply), "redis-cli {args:?}: {}", run.stdout());
        pids.push(run.pid);
    }

    let spans = agent.finish(6);
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    assert_eq!(spans.len(), 6, "one span per command\n{ctx}");
    let of_pid = |pid: u32| -> Vec<ReceivedSpan> {
        spans.iter().filter(|s| s.resource_int("process.pid") == Some(pid as i64)).cloned().collect()
    };
    let expected: [&[DbSpan]; 5] = [
        &[redis_span("SET", "SET foo ?")],
        &[redis_span("GET", "GET foo")],
        &[failed(redis_span("INCR", "INCR foo"), "ERR")],
        &[failed(redis_span("LPUSH", "LPUSH foo ?"), "WRONGTYPE")],
        &[in_ns(redis_span("SET", "SET k3 ?"), "3")],
    ];
    for (pid, want) in pids.iter().zip(expected) {
        let mut mine = of_pid(*pid);
        assert_client_process(&mine, "redis-cli", *pid, &ctx);
        if want[0].query == "SET k3 ?" {
            // `-n 3`: SELECT 3 first, in database 0 (its text is checked
            // in redis_keyless_arguments_are_sanitised).
            assert_eq!(mine.len(), 2, "SELECT and SET\n{ctx}");
            let select = mine.remove(0);
            assert_eq!(select.name(), "SELECT", "{select}");
            assert_attr_str(&select, "db.operation.name", "SELECT");
            assert_attr_str(&select, "db.namespace", "0");
            assert_eq!(select.status_code(), StatusCode::Unset, "{select}");
        }
        assert_db_sequence(&mine, want, server.port(), &ctx);
    }
}

/// Commands without a key keep none of their arguments in the sanitised
/// text: the password of AUTH (sent by `redis-cli -a` on every connection),
/// the message of ECHO and the index of SELECT are all `?`.
#[test]
fn redis_keyless_arguments_are_sanitised() {
    const PASSWORD: &str = "s3cret-password";
    let _serial = serial();
    agent_bin();
    let server = Redis::start_with(&["--requirepass", PASSWORD]);
    let mut agent = DbAgent::start("redis_keyless_arguments_are_sanitised", server.port(), |b| b);
    let echo = server.cli(&["--no-auth-warning", "-a", PASSWORD, "ECHO", "private-message"]);
    echo.assert_success("redis-cli ECHO");
    assert_eq!(echo.stdout().trim(), "private-message");
    let select = server.cli(&["--no-auth-warning", "-a", PASSWORD, "SELECT", "5"]);
    select.assert_success("redis-cli SELECT");
    assert_eq!(select.stdout().trim(), "OK");
    let wrong = server.cli(&["AUTH", "wrong-password"]);
    assert!(wrong.stdout().contains("WRONGPASS"), "{wrong:?}");

    let spans = agent.finish(5);
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    assert_eq!(spans.len(), 5, "{ctx}");
    for s in &spans {
        let text = s.attr_str("db.query.text").unwrap_or_default();
        assert!(
            !text.contains("password") && !text.contains("private-message"),
            "an argument that is not a key is in db.query.text: {s}\n{ctx}"
        );
    }
    let of_pid = |pid: u32| -> Vec<ReceivedSpan> {
        of_service(&spans, "redis-cli")
            .into_iter()
            .filter(|s| s.resource_int("process.pid") == Some(pid as i64))
            .collect()
    };
    let auth = || redis_span("AUTH", "AUTH ?");
    let expected = [
        (echo.pid, vec![auth(), redis_span("ECHO", "ECHO ?")]),
        (select.pid, vec![auth(), redis_span("SELECT", "SELECT ?")]),
        (wrong.pid, vec![failed(auth(), "WRONGPASS")]),
    ];
    for (pid, want) in expected {
        assert_db_sequence(&of_pid(pid), &want, server.port(), &ctx);
    }
}

/// redis-benchmark with 16-command pipelines: exactly one span per SET and
/// GET it sends, plus its two CONFIG GET queries at start.
#[test]
fn redis_benchmark_pipelined() {
    let _serial = serial();
    agent_bin();
    let server = Redis::start();
    let mut agent = DbAgent::start("redis_benchmark_pipelined", server.port(), |b| b);
    let run = server.benchmark(&["-P", "16", "-n", "1600", "-t", "set,get", "-q"]);
    let out = run.stdout();
    assert!(out.contains("SET:") && out.contains("GET:"), "redis-benchmark output:\n{out}");

    let spans = agent.finish(3202);
    let ctx = || {
        let mut counts = std::collections::BTreeMap::new();
        for s in &spans {
            *counts.entry(s.attr_str("db.query.text").unwrap_or_default()).or_insert(0) += 1;
        }
        format!("spans by query text: {counts:#?}\nagent: {}\nraw events: {}", agent.stats(), agent.record().display())
    };
    assert_no_server_spans(&spans, &ctx());
    assert_client_process(&spans, "redis-benchmark", run.pid, &ctx());
    let sets = with_query(&spans, "SET key:__rand_int__ ?");
    let gets = with_query(&spans, "GET key:__rand_int__");
    assert_eq!(sets.len(), 1600, "{}", ctx());
    assert_eq!(gets.len(), 1600, "{}", ctx());
    assert_db_span(sets[0], &redis_span("SET", "SET key:__rand_int__ ?"), server.port());
    assert_db_span(gets[0], &redis_span("GET", "GET key:__rand_int__"), server.port());
    for s in sets.iter().chain(&gets) {
        assert_eq!(s.status_code(), StatusCode::Unset, "{s}");
    }
    let config = with_query(&spans, "CONFIG GET ?");
    assert_eq!(config.len(), 2, "CONFIG GET save, CONFIG GET appendonly\n{}", ctx());
    for s in &config {
        assert_db_span(s, &rows(redis_span("CONFIG", "CONFIG GET ?"), 2), server.port());
    }
    assert_eq!(spans.len(), 3202, "{}", ctx());
}

const RESP_PIPELINE_SCRIPT: &str = r#"
import socket
import sys

def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out

expected = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n:2\r\n$1\r\n2\r\n"
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
# One write: the whole transaction is pipelined.
s.sendall(resp("MULTI") + resp("SET", "a", "1") + resp("INCR", "a")
          + resp("GET", "a") + resp("EXEC"))
got = b""
while len(got) < len(expected):
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
assert got == expected, got
s.close()
print("ok")
"#;

/// A pipelined MULTI/EXEC transaction: one span per command, each paired
/// with its own reply (`+OK`, `+QUEUED`, the EXEC array).
#[test]
fn redis_multi_exec_pipeline() {
    let _serial = serial();
    agent_bin();
    let python = python_with(&[]);
    let server = Redis::start();
    let mut agent = DbAgent::start("redis_multi_exec_pipeline", server.port(), |b| b);
    let run = run_python(&python, RESP_PIPELINE_SCRIPT, &[server.port().to_string()]);
    assert_eq!(run.stdout().trim(), "ok");

    let spans = agent.finish(5);
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    assert_eq!(spans.len(), 5, "one span per command\n{ctx}");
    assert_client_process(&spans, "python3", run.pid, &ctx);
    let want = [
        redis_span("MULTI", "MULTI"),
        redis_span("SET", "SET a ?"),
        redis_span("INCR", "INCR a"),
        redis_span("GET", "GET a"),
        rows(redis_span("EXEC", "EXEC"), 3),
    ];
    assert_db_sequence(&spans, &want, server.port(), &ctx);
}

const SUBSCRIBER_SCRIPT: &str = r#"
import socket
import sys

n = int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n")
f = s.makefile("rb")

def read_value():
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"*":
        return [read_value() for _ in range(int(rest))]
    if kind == b"$":
        data = f.read(int(rest) + 2)
        return data[:-2]
    if kind == b":":
        return int(rest)
    return rest

assert read_value() == [b"subscribe", b"news", 1]
print("subscribed", flush=True)
for i in range(n):
    msg = read_value()
    assert msg == [b"message", b"news", b"m%d" % i], msg
s.close()
print("ok")
"#;

/// Pub/sub: SUBSCRIBE is one span (completed by its confirmation) and each
/// PUBLISH one span; the messages pushed to the subscriber are not.
#[test]
fn redis_pubsub_pushes_are_not_spans() {
    let _serial = serial();
    agent_bin();
    let python = python_with(&[]);
    let server = Redis::start();
    let mut agent = DbAgent::start("redis_pubsub_pushes_are_not_spans", server.port(), |b| b);
    let mut sub = spawn_python(&python, SUBSCRIBER_SCRIPT, &[server.port().to_string(), "5".into()]);
    let mut line = String::new();
    BufReader::new(sub.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    if line.trim() != "subscribed" {
        let mut err = String::new();
        let _ = sub.stderr.as_mut().unwrap().read_to_string(&mut err);
        panic!("subscriber did not subscribe: {line:?}\n{err}");
    }
    let mut publishers = Vec::new();
    for i in 0..5 {
        let run = server.cli(&["PUBLISH", "news", &format!("m{i}")]);
        run.assert_success("redis-cli PUBLISH");
        assert_eq!(run.stdout().trim(), "1", "one subscriber receives m{i}");
        publishers.push(run.pid);
    }
    let sub = wait_python(sub, "subscriber");
    assert_eq!(sub.stdout().trim(), "ok");

    let spans = agent.finish(6);
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    assert_eq!(spans.len(), 6, "SUBSCRIBE and 5 PUBLISH, no pushed messages\n{ctx}");
    let subscriber = of_service(&spans, "python3");
    assert_client_process(&subscriber, "python3", sub.pid, &ctx);
    assert_db_sequence(&subscriber, &[redis_span("SUBSCRIBE", "SUBSCRIBE news")], server.port(), &ctx);
    let published = of_service(&spans, "redis-cli");
    assert_eq!(published.len(), 5, "{ctx}");
    for (s, pid) in published.iter().zip(&publishers) {
        assert_eq!(s.resource_int("process.pid"), Some(*pid as i64), "{s}\n{ctx}");
        assert_db_span(s, &redis_span("PUBLISH", "PUBLISH news ?"), server.port());
    }
}

// ---------------------------------------------------------------------------
// Servers

/// All three servers traced at once by one agent: the servers' own sides of
/// the connections (postgres backends, mariadbd, redis-server) produce no
/// spans, only the clients do.
#[test]
fn database_servers_produce_no_spans() {
    let _serial = serial();
    agent_bin();
    let pg = Postgres::start();
    let maria = MariaDb::start();
    let redis_server = Redis::start();
    let mut agent = DbAgent::start("database_servers_produce_no_spans", pg.port(), |b| {
        b.port(maria.port()).port(redis_server.port())
    });
    pg.psql("postgres", &["SELECT 1", "SELECT 2"]).assert_success("psql");
    maria.cli(None, &[], "SELECT 1; SELECT 2").assert_success("mariadb");
    redis_server.cli(&["PING"]).assert_success("redis-cli");

    let spans = agent.finish(5);
    let ctx = agent.context(&spans);
    assert_no_server_spans(&spans, &ctx);
    let count = |service: &str| of_service(&spans, service).len();
    assert_eq!(count("psql"), 2, "{ctx}");
    assert_eq!(count("mariadb"), 2, "{ctx}");
    assert_eq!(count("redis-cli"), 1, "{ctx}");
    assert_eq!(spans.len(), 5, "{ctx}");
    for pid in [pg.pid(), maria.pid(), redis_server.pid()] {
        assert!(
            spans.iter().all(|s| s.resource_int("process.pid") != Some(pid as i64)),
            "a span from server pid {pid}\n{ctx}"
        );
    }
}
