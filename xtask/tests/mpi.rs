//! Training under `mpirun`: one worker per process, the real binary started by Open MPI's
//! launcher on this machine (`--oversubscribe`: more processes than cores is fine here).
//!
//! Needs the `mpi` feature and an MPI installation (`mpirun` on the PATH; Debian:
//! `openmpi-bin libopenmpi-dev`, and `libclang-dev` for the bindings' build):
//!
//! ```text
//! cargo test -p xtask --features mpi --test mpi
//! ```
//!
//! | case | what it shows |
//! |---|---|
//! | 2 processes x B | the same losses and end weights as 2 threads x B in one process (per-worker BatchNorm), and with synchronised BatchNorm the same as 2 threads with it, whose step equals 1 worker x 2B (swav-train's tests) |
//! | a rank killed with SIGKILL | the job ends (no hang) with an error naming the rank |
//! | an error on one rank (a full disk where rank 0 writes a checkpoint) | the job ends (no hang) with an error naming the rank and the cause |
//! | stopped, then resumed under mpirun | the end is bit-identical to the uninterrupted job's (rank 0's checkpoint holds both ranks' queues); resuming with another number of processes is refused |
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{assert_same_tensors, pretrain, text, with_pretrain_args, xtask};

/// `mpirun -np n xtask pretrain --out out TINY extra`.
fn mpirun(n: usize, out: &Path, extra: &[&str]) -> Command {
    mpirun_with(n, out, extra, &[])
}

/// [`mpirun`] with environment variables set for every process.
fn mpirun_with(n: usize, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe"]);
    for (k, v) in env {
        c.env(k, v).args(["-x", k]);
    }
    c.arg("-np").arg(n.to_string()).arg(xtask());
    with_pretrain_args(&mut c, out, extra);
    c
}

/// The output of `child` once it exits; fails with `hang` if it runs longer than `limit`.
fn ended_within(mut child: Child, limit: Duration, hang: &str) -> Output {
    let t0 = Instant::now();
    while child.try_wait().expect("status").is_none() {
        assert!(t0.elapsed() < limit, "{hang}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn output(mut c: Command) -> Output {
    c.output()
        .expect("the command runs (is mpirun on the PATH?)")
}

fn ok(c: Command, case: &str) {
    let o = output(c);
    assert!(o.status.success(), "{case}: {}", text(&o));
}

/// The loss of every logged step, in order.
fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["type"] == "step")
        .map(|r| r["loss"].as_f64().expect("loss"))
        .collect()
}

#[test]
fn two_processes_train_as_two_threads_with_and_without_synchronised_batch_norm() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (sync, extra) in [
        ("per-worker BatchNorm", &[][..]),
        (
            "synchronised BatchNorm",
            &["--set", "swav.sync_bn=true"][..],
        ),
    ] {
        let slug = if extra.is_empty() { "local" } else { "sync" };
        let procs = dir.path().join(format!("mpi-{slug}"));
        let threads = dir.path().join(format!("threads-{slug}"));
        // One kernel thread on both sides: the CPU kernels split some reductions by the size
        // of their thread pool, which two workers in one process share, so only equal pools
        // give the same bits (with the machine's pools the two differ from the third step on
        // by summation order, measured: 7e-7 in the loss).
        ok(
            mpirun_with(2, &procs, extra, &[("RAYON_NUM_THREADS", "1")]),
            sync,
        );
        let mut args = vec!["--devices", "2"];
        args.extend_from_slice(extra);
        let mut c = pretrain(&threads, &args);
        c.env("RAYON_NUM_THREADS", "1");
        ok(c, sync);
        // Six steps through the warmup, the prototypes' unfreezing and the queue's start: the
        // same losses and every tensor of the end (weights, BatchNorm statistics, momentum
        // buffers, both workers' queues) the same bits.
        let (a, b) = (losses(&procs), losses(&threads));
        assert_eq!(a.len(), 6, "{sync}: 3 epochs of 2 steps");
        assert_eq!(a, b, "{sync}: the losses");
        assert_same_tensors(
            &procs.join("checkpoint.bpk"),
            &threads.join("checkpoint.bpk"),
            sync,
        );
        let summary = std::fs::read_to_string(procs.join("summary.json")).expect("summary");
        assert!(summary.contains("\"completed\": true"), "{sync}: {summary}");
    }
}

/// The processes of an MPI job named `out` with rank `rank` (found by their environment).
fn rank_pid(out: &Path, rank: usize) -> Option<u32> {
    let needle = out.display().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.contains(&needle) || !cmd.contains("pretrain") || cmd.starts_with("mpirun") {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let env = String::from_utf8_lossy(&env);
        if env
            .split('\0')
            .any(|kv| kv == format!("OMPI_COMM_WORLD_RANK={rank}"))
        {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_rank_killed_outright_ends_the_job_with_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("killed");
    let mut c = mpirun(2, &out, &["--set", "swav.epochs=200"]);
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts");
    // Wait until the job trains (a metrics line), then kill rank 1.
    let start = Instant::now();
    let pid = loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job did not start training"
        );
        let trained = std::fs::read_to_string(out.join("metrics.jsonl"))
            .is_ok_and(|t| t.contains("\"step\""));
        if trained && let Some(pid) = rank_pid(&out, 1) {
            break pid;
        }
        assert!(
            child.try_wait().expect("status").is_none(),
            "the job ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let o = ended_within(
        child,
        Duration::from_secs(60),
        "rank 0 still runs a minute after rank 1 was killed: the job hangs",
    );
    let t = text(&o);
    assert!(!o.status.success(), "the job reports failure: {t}");
    assert!(
        t.contains("rank 1"),
        "the error names the rank that died: {t}"
    );
}

#[test]
fn a_job_stopped_and_resumed_under_mpirun_ends_bit_identical_and_another_count_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let reference = dir.path().join("reference");
    ok(mpirun(2, &reference, &[]), "uninterrupted job");
    let out = dir.path().join("resumed");
    // Stopped (as a kill would) in the second epoch, after the queue started and the checkpoint
    // of iteration 3 (mid-epoch) was written.
    let o = output(mpirun(2, &out, &["--stop-after", "4"]));
    assert!(o.status.success(), "stopped job: {}", text(&o));
    let o = output(pretrain(&out, &[]));
    assert!(
        !o.status.success(),
        "one process resumed a 2-process checkpoint"
    );
    let t = text(&o);
    assert!(
        t.contains("world_size"),
        "the refusal says why (the number of workers): {t}"
    );
    let o = output(mpirun(3, &out, &[]));
    assert!(
        !o.status.success(),
        "3 processes resumed a 2-process checkpoint: {}",
        text(&o)
    );
    ok(mpirun(2, &out, &[]), "resumed job");
    assert_same_tensors(
        &out.join("checkpoint.bpk"),
        &reference.join("checkpoint.bpk"),
        "resumed under mpirun",
    );
}

#[test]
fn an_error_on_one_rank_ends_the_job_with_an_error_naming_the_rank_and_the_cause() {
    // A full disk where rank 0 writes the checkpoint of iteration 3 (injected): rank 0 stops
    // with the error; rank 1, already in the next step's collectives, must not wait for ever.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("full");
    let child = mpirun(2, &out, &["--inject-fault", "enospc-checkpoint@3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts");
    let o = ended_within(
        child,
        Duration::from_secs(120),
        "the job still runs two minutes after rank 0 failed: it hangs",
    );
    let t = text(&o);
    assert!(!o.status.success(), "the job reports failure: {t}");
    assert!(t.contains("rank 0 of 2 failed"), "names the rank: {t}");
    assert!(
        t.contains("No space left on device"),
        "names the cause: {t}"
    );
}
