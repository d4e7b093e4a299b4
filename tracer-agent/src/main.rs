use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tracer_agent::{
    capture::probes::{Filters, LoadOptions, Probes},
    config::{Args, Command},
    export::{ExportStats, Exporter},
    pipeline::{self, Pipeline, PipelineStats, SpanQueue},
    resource::Resources,
    route::RouteMatcher,
    span::Clock,
};

fn main() -> ExitCode {
    let args = Args::parse();
    if args.command == Some(Command::Doctor) {
        return ExitCode::from(tracer_agent::capture::doctor::run(&load_options(&args)));
    }
    if let Some(Command::GoInfo { path }) = &args.command {
        return match tracer_agent::runtimes::go::describe(path) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tracer-agent: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    batch_scheduling();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracer-agent: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the agent's threads (all created after this call, so they inherit
/// it) as SCHED_BATCH: a woken agent thread does not preempt the traced
/// services, which keeps their latency, while its share of CPU stays that
/// of a normal process so it still keeps up with the ring buffer.
fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread with a valid parameter.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

async fn replay(
    path: &std::path::Path,
    args: &Args,
    routes: RouteMatcher,
    exporter: Exporter,
    export_stats: Arc<ExportStats>,
) -> Result<()> {
    let file = tracer_agent::capture::record::Replay::open(path)?;
    let pipe = Pipeline::from_args(args, routes, Clock { offset: file.clock_offset }, &exporter);
    let (queue, spans) = SpanQueue::new(args.bsp_max_queue_size, export_stats.clone());
    let exporter_task = tokio::spawn(exporter.run(spans));
    let cpu0 = cpu_seconds();
    let wall0 = std::time::Instant::now();
    let stats = tokio::task::spawn_blocking(move || {
        let r = pipeline::replay(file, pipe, &queue);
        drop(queue);
        r
    })
    .await
    .context("replay thread")??;
    let _ = exporter_task.await;
    let cpu = cpu_seconds() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "tracer-agent: replay records={} spans={} spans_exported={} spans_printed={} spans_dropped={} cpu_seconds={cpu:.3} wall_seconds={wall:.3} records_per_cpu_second={:.0} spans_per_cpu_second={:.0}",
        stats.records,
        stats.spans,
        r(&export_stats.exported),
        r(&export_stats.printed),
        r(&export_stats.dropped_queue_full) + r(&export_stats.dropped_export_failed),
        stats.records as f64 / cpu.max(1e-9),
        stats.spans as f64 / cpu.max(1e-9),
    );
    Ok(())
}

fn stats_line(p: &PipelineStats, probes: &Probes, e: &ExportStats) -> String {
    let k = probes.counters();
    let t = &p.tracker;
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "tracer-agent: stats probe_fallbacks={} kernel_events={} kernel_lost={} kernel_truncated={} kernel_read_errors={} records={} decode_errors={} connections={} connections_evicted={} connections_expired={} opaque_connections={} db_server_connections={} spans={} spans_linked={} links_header={} links_peer={} links_thread={} links_thread_spawn={} links_goroutine={} links_forwarded={} links_tcp_option={} calls_carried={} links_ambiguous={} handoff_processes={} go_processes={} gin_routes={} gin_failed={} gin_probe_hits={} orphan_streams={} spans_exported={} spans_printed={} spans_dropped_queue_full={} spans_dropped_export_failed={} export_errors={}",
        probes.fallbacks(), k.sent, k.lost, k.truncated, k.read_errors, p.records, p.decode_errors, p.connections, t.connections_evicted,
        t.connections_expired, t.opaque_connections, t.db_server_connections, p.spans, p.linked, p.links.by_header, p.links.by_peer, p.links.by_thread, p.links.by_thread_spawn, p.links.by_goroutine, p.links.by_forwarded, p.links.by_tcp_option, p.links.carried, p.links.ambiguous, p.links.handoff_processes, p.links.go_processes, p.gin_routes, p.gin_failed, p.gin_hits, p.orphan_streams, r(&e.exported), r(&e.printed), r(&e.dropped_queue_full),
        r(&e.dropped_export_failed), r(&e.export_errors)
    )
}

fn load_options(args: &Args) -> LoadOptions {
    let filters = Filters {
        allow_pids: args.pids.clone(),
        deny_pids: args.exclude_pids.clone(),
        allow_comms: args.comms.clone(),
        deny_comms: args.exclude_comms.clone(),
        allow_ports: args.ports.clone(),
        deny_ports: args.exclude_ports.clone(),
    };
    let mut opts = LoadOptions::new(args.capture_bytes, filters, args.ring_buffer);
    opts.reject = args.reject_programs.clone();
    opts.carrier = args.trace_carrier;
    opts
}

async fn run(args: Args) -> Result<()> {
    // Validate all configuration before touching the kernel.
    let export = args.export()?;
    let resources = Resources::new(args.resource_attributes()?, args.service_names()?);
    let routes = RouteMatcher::new(&args.routes).map_err(|e| anyhow::anyhow!("--route: {e}"))?;
    let export_stats = Arc::new(ExportStats::default());
    let exporter = Exporter::new(
        export,
        args.print,
        resources,
        Duration::from_millis(args.bsp_schedule_delay_ms),
        args.bsp_max_export_batch_size,
        export_stats.clone(),
    )?
    .print_format(args.print_format);

    if let Some(path) = &args.replay {
        return replay(path, &args, routes, exporter, export_stats).await;
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;

    let (mut probes, rings) = Probes::load(&load_options(&args))?;
    // Go programs already running get the Go function probes before the
    // first event is read; those found later, as soon as they are seen.
    let carrier = args.trace_carrier != tracer_agent::capture::probes::Carrier::None;
    if args.go_probes || carrier {
        for pid in
            tracer_agent::runtimes::go_processes(&args.pids, &args.exclude_pids, &args.comms, &args.exclude_comms)
        {
            if carrier {
                probes.no_carry(pid);
            }
            if args.go_probes {
                probes.attach_go(pid, false);
            }
        }
    }
    let (go_tx, mut go_rx) = tokio::sync::mpsc::unbounded_channel::<pipeline::GoRequest>();
    let clock = Clock::now();
    let mut pipe = Pipeline::from_args(&args, routes, clock, &exporter);
    pipe.discard = args.discard;
    pipe.tracker.listeners = Some(tracer_agent::listeners::Listeners::default());
    pipe.inspect_runtimes = true;
    if args.go_probes || carrier {
        pipe.go_found = Some(go_tx);
    }
    if args.go_probes {
        pipe.gin_layouts = Some(probes.gin_layouts.clone());
    }
    if let Some(path) = &args.record {
        pipe.recorder = Some(tracer_agent::capture::record::Recorder::create(path, clock.offset)?);
    }
    let (queue, spans) = SpanQueue::new(args.bsp_max_queue_size, export_stats.clone());
    let exporter_task = tokio::spawn(exporter.run(spans));

    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Mutex::new(PipelineStats::default()));
    let worker = {
        let stop = stop.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || pipeline::run(rings, pipe, queue, stop, shared))
            .context("starting pipeline thread")?
    };
    eprintln!("tracer-agent: ready (probes attached, capturing up to {} bytes per call)", args.capture_bytes);

    let interval = args.stats_interval_secs;
    let mut next_stats = tokio::time::Instant::now() + Duration::from_secs(interval.max(1));
    loop {
        let stats_due = async {
            if interval == 0 {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep_until(next_stats).await
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            Some(req) = go_rx.recv() => match req {
                pipeline::GoRequest::Attach(pid, goroutines) => {
                    if carrier {
                        probes.no_carry(pid);
                    }
                    if args.go_probes {
                        drop(probes.attach_go(pid, goroutines));
                    }
                }
                pipeline::GoRequest::GinDone(pid) => probes.gin_done(pid),
            },
            _ = stats_due => {
                next_stats += Duration::from_secs(interval);
                let p = shared.lock().map(|s| *s).unwrap_or_default();
                eprintln!("{}", stats_line(&p, &probes, &export_stats));
            }
        }
    }

    // Drain what the kernel already captured, flush spans, then detach.
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), exporter_task).await;
    let p = shared.lock().map(|s| *s).unwrap_or_default();
    eprintln!("{}", stats_line(&p, &probes, &export_stats));
    drop(probes);
    Ok(())
}
