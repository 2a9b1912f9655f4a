//! The fault suite: every way a long run dies, injected on purpose into the real binary
//! (`cargo xtask pretrain`), and what "nothing lost" means for each, checked exactly.
//!
//! Run alone with `cargo test -p xtask --test faults` (CI runs it with the workspace's tests).
//!
//! | fault | nothing lost means |
//! |---|---|
//! | `kill -9` at seeded random moments, 1 and 2 workers | the resumed run ends with every tensor of its checkpoint (weights, optimiser state, queues) bit-identical to an uninterrupted run's |
//! | SIGTERM, SIGINT | the step in progress is finished and checkpointed, the exit status is 75, the resume command is printed, and the resumed run ends bit-identical |
//! | a second signal | the process exits at once (128 + signal); the newest checkpoint that reads is intact and the resumed run ends bit-identical |
//! | undecodable, empty, oversized-header and unreadable images, a dangling link | the run trains to its end; each bad file is named once in the summary with its reason |
//! | a class folder that vanishes mid-run | the run trains to its end; its files are named as skipped from that epoch on |
//! | a full disk during a checkpoint (ENOSPC injected; a small tmpfs filled up where it can be mounted) | the run stops with an error naming the checkpoint and the cause; the checkpoint before is intact and resumes once space is back |
//! | NaN / infinity in the loss or in a gradient | the run stops at that step with a diagnostic naming it (and the parameter for a gradient); no update is applied; the last checkpoint holds finite weights and resumes |
//! | a truncated newest checkpoint | resume falls back to the one before, says so, and ends bit-identical |
//! | a foreign file as the checkpoint | refused with an error naming the file; nothing is overwritten |

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{assert_same_tensors, pretrain, tensors, text};

const ITERATIONS: u64 = 12;

fn run(out: &Path, extra: &[&str]) -> Output {
    pretrain(out, extra)
        .output()
        .expect("the xtask binary runs")
}

/// The iteration stored in a checkpoint.
fn checkpoint_iteration(ckpt: &Path) -> u64 {
    let c = swav_models::read_checkpoint(ckpt).expect("the checkpoint reads");
    let state: serde_json::Value =
        serde_json::from_str(c.metadata.get("swav.train_state").expect("state")).expect("json");
    state["iteration"].as_u64().expect("iteration")
}

fn summary(out: &Path) -> serde_json::Value {
    let s = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    serde_json::from_str(&s).expect("summary parses")
}

/// The uninterrupted run of 1 and of 2 workers (made once, shared by the cases).
fn reference(workers: usize) -> PathBuf {
    static ONE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    static TWO: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let cell = if workers == 1 { &ONE } else { &TWO };
    let (_, ckpt) = cell.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("reference");
        let o = run(&out, &worker_args(workers));
        assert!(o.status.success(), "reference run: {}", text(&o));
        (dir, out.join("checkpoint.bpk"))
    });
    ckpt.clone()
}

fn worker_args(workers: usize) -> Vec<&'static str> {
    if workers == 1 {
        vec![]
    } else {
        // 2 workers of 16 images: 2 iterations per epoch, so 6 epochs make 12 iterations.
        vec!["--devices", "2", "--set", "swav.epochs=6"]
    }
}

/// The highest iteration of a step record in the run's metrics (0 when none).
fn logged_iteration(out: &Path) -> u64 {
    let Ok(f) = std::fs::File::open(out.join("metrics.jsonl")) else {
        return 0;
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter(|r| r["type"] == "step")
        .filter_map(|r| r["iteration"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Waits until the run logs iteration `at` or more; `false` when it exited first.
fn wait_for_iteration(child: &mut Child, out: &Path, at: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if logged_iteration(out) >= at {
            return true;
        }
        if child.try_wait().expect("child status").is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the run did not reach iteration {at} in 10 minutes");
}

fn send(child: &Child, signals: &[&str]) {
    for s in signals {
        let ok = Command::new("kill")
            .arg(format!("-{s}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{s}");
    }
}

fn finish(child: Child) -> (ExitStatus, String) {
    let o = child.wait_with_output().expect("the run ends");
    let t = text(&o);
    (o.status, t)
}

/// kill -9 at seeded random moments (three per run), then the same command to the end.
fn killed_and_resumed(workers: usize, seed: u64) {
    let reference = reference(workers);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("killed");
    let extra = worker_args(workers);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut at = 0;
    let mut kills = Vec::new();
    for _ in 0..3 {
        // A point past everything logged so far, so it can only be met by this process.
        at = (at.max(logged_iteration(&out)) + rng.random_range(1..=3)).min(ITERATIONS - 1);
        let mut child = pretrain(&out, &extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let reached = wait_for_iteration(&mut child, &out, at);
        // A random extra delay: the kill lands anywhere in the step, the checkpoint or the
        // loader's prefetch.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        child.kill().expect("kill -9");
        let status = child.wait().expect("reaped");
        kills.push((at, logged_iteration(&out)));
        assert!(reached, "the run ended before iteration {at}");
        // The kill met a running process (not one that had already finished the run).
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "kill {} at iteration {at} interrupted the run: {status}",
            kills.len()
        );
        assert!(
            logged_iteration(&out) < ITERATIONS,
            "kill {} landed after the last iteration",
            kills.len()
        );
    }
    let o = run(&out, &extra);
    assert!(
        o.status.success(),
        "resume after kills {kills:?}: {}",
        text(&o)
    );
    assert!(text(&o).contains("resumed from iteration"), "{}", text(&o));
    assert_eq!(summary(&out)["iterations"], ITERATIONS);
    assert_same_tensors(
        &out.join("checkpoint.bpk"),
        &reference,
        &format!("{workers} worker(s), killed at {kills:?} (target, logged)"),
    );
}

#[test]
fn kill_9_at_random_moments_then_resume_ends_bit_identical() {
    killed_and_resumed(1, 7);
}

#[test]
fn kill_9_with_two_workers_then_resume_ends_bit_identical() {
    killed_and_resumed(2, 11);
}

#[test]
fn sigterm_and_sigint_checkpoint_the_step_exit_75_and_resume_bit_identical() {
    let reference = reference(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("preempted");
    for (signal, at) in [("TERM", 2), ("INT", 7)] {
        let mut child = pretrain(&out, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        assert!(wait_for_iteration(&mut child, &out, at), "reached {at}");
        send(&child, &[signal]);
        let (status, t) = finish(child);
        assert_eq!(status.code(), Some(75), "SIG{signal}: {t}");
        assert!(t.contains("resume: run the same command again"), "{t}");
        // The step in progress was finished and checkpointed: the checkpoint is at or past the
        // iteration the signal arrived in, and the summary says where it stopped.
        let s = summary(&out);
        assert_eq!(s["completed"], false);
        let stopped = s["preempted"]["iteration"].as_u64().expect("preempted");
        assert!(
            stopped >= at,
            "SIG{signal}: stopped at {stopped}, signalled at {at}"
        );
        assert_eq!(checkpoint_iteration(&out.join("checkpoint.bpk")), stopped);
        assert_eq!(
            logged_iteration(&out),
            stopped,
            "SIG{signal}: no step after the stop"
        );
    }
    let o = run(&out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_tensors(&out.join("checkpoint.bpk"), &reference, "SIGTERM + SIGINT");
}

#[test]
fn a_second_signal_exits_at_once_and_the_run_still_resumes_bit_identical() {
    // Wider layers than the other cases, so that a step lasts far longer than the gap between
    // the two signals: the second one must arrive while the first still waits for the step.
    let wide = ["--set", "swav.base_width=16"];
    let dir = tempfile::tempdir().expect("temp dir");
    let reference = dir.path().join("reference");
    let o = run(&reference, &wide);
    assert!(o.status.success(), "reference run: {}", text(&o));
    let out = dir.path().join("twice");
    let mut child = pretrain(&out, &wide)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(wait_for_iteration(&mut child, &out, 4));
    // Two different signals (neither merges into the other while pending), sent by one shell's
    // built-in `kill`, microseconds apart.
    let ok = Command::new("sh")
        .args(["-c", "kill -INT \"$1\"; kill -TERM \"$1\"", "sh"])
        .arg(child.id().to_string())
        .status()
        .expect("sh runs")
        .success();
    assert!(ok, "kill");
    let (status, t) = finish(child);
    assert!(
        matches!(status.code(), Some(130 | 143)),
        "expected an immediate exit with 128 + the second signal: {status:?}\n{t}"
    );
    assert!(!t.contains("resume: run the same command again"), "{t}");
    let o = run(&out, &wide);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_tensors(
        &out.join("checkpoint.bpk"),
        &reference.join("checkpoint.bpk"),
        "two signals",
    );
}

/// A PNG file of a small coloured square.
fn write_png(path: &Path, seed: u8) {
    let img = image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([seed.wrapping_mul(37), (x * 16) as u8, (y * 16) as u8 ^ seed])
    });
    img.save(path).expect("png written");
}

/// A PNG whose header declares 100000 x 100000 pixels (40 GB decoded), with valid chunk CRCs
/// and a few bytes of image data.
fn oversized_png() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        let mut body = kind.to_vec();
        body.extend(data);
        v.extend((data.len() as u32).to_be_bytes());
        v.extend(&body);
        v.extend(crc32fast::hash(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 6, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    v
}

#[test]
fn bad_image_files_and_a_vanishing_class_folder_are_skipped_and_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let classes = ["a", "b", "c", "gone"];
    for (ci, c) in classes.iter().enumerate() {
        std::fs::create_dir_all(data.join("train").join(c)).expect("mkdir");
        for i in 0..16u8 {
            write_png(
                &data.join("train").join(c).join(format!("{i}.png")),
                i + 16 * ci as u8,
            );
        }
    }
    let bad = data.join("train").join("a");
    std::fs::write(bad.join("garbage.jpg"), b"this is not a JPEG file at all").expect("w");
    std::fs::write(bad.join("empty.png"), b"").expect("w");
    std::fs::write(bad.join("huge.png"), oversized_png()).expect("w");
    std::os::unix::fs::symlink(dir.path().join("nowhere.png"), bad.join("dangling.png"))
        .expect("link");
    // Unreadable for any user, root included: reading /proc/self/mem at offset 0 fails (EIO).
    std::os::unix::fs::symlink("/proc/self/mem", bad.join("unreadable.png")).expect("link");
    let expected_bad = [
        "garbage.jpg",
        "empty.png",
        "huge.png",
        "dangling.png",
        "unreadable.png",
    ];

    let out = dir.path().join("run");
    let data_s = data.display().to_string();
    // 64 good images, 16 of which vanish after the first epoch.
    let mut child = pretrain(&out, &["--data", &data_s, "--set", "swav.epochs=3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(wait_for_iteration(&mut child, &out, 5), "reached epoch 1");
    std::fs::remove_dir_all(data.join("train").join("gone")).expect("the class folder vanishes");
    let (status, t) = finish(child);
    assert!(status.success(), "{t}");
    let s = summary(&out);
    assert_eq!(s["completed"], true, "{t}");
    let skipped: Vec<String> = s["skipped_files"]
        .as_array()
        .expect("skipped_files")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    for name in expected_bad {
        let hits: Vec<_> = skipped
            .iter()
            .filter(|l| l.contains(&format!("/{name} ")))
            .collect();
        assert_eq!(hits.len(), 1, "{name} named once: {skipped:#?}");
    }
    let line = |name: &str| {
        skipped
            .iter()
            .find(|l| l.contains(&format!("/{name} ")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        line("dangling.png").contains("dangling symbolic link"),
        "{}",
        line("dangling.png")
    );
    assert!(
        line("huge.png").contains("100000"),
        "the size is named: {}",
        line("huge.png")
    );
    let gone = skipped.iter().filter(|l| l.contains("/gone/")).count();
    assert!(
        gone > 0,
        "the vanished class's files are named: {skipped:#?}"
    );
    assert_eq!(
        skipped.len(),
        expected_bad.len() + gone,
        "nothing else skipped: {skipped:#?}"
    );
    assert!(
        t.contains(&format!("skipped files: {}", skipped.len())),
        "{t}"
    );
}

/// The outcome of a run in `out` stopped by a full disk at a checkpoint: a clear error naming
/// the file and the cause, the checkpoint before intact; then `resume` (with space back) ends
/// bit-identical to the uninterrupted run.
fn stopped_by_a_full_disk(o: &Output, out: &Path, resume: &Path, case: &str) {
    let t = text(o);
    assert!(
        !o.status.success(),
        "{case}: the disk was expected to fill up: {t}"
    );
    assert!(t.contains("could not be written"), "{case}: {t}");
    assert!(
        t.contains("No space left on device"),
        "{case}: the cause is named: {t}"
    );
    let ckpt = out.join("checkpoint.bpk");
    assert!(
        t.contains(&ckpt.display().to_string()),
        "{case}: the checkpoint is named: {t}"
    );
    let kept = checkpoint_iteration(&ckpt);
    assert!(kept > 0, "{case}: an earlier checkpoint is kept and reads");
    assert!(
        !out.join("checkpoint.next.bpk").exists(),
        "{case}: no partial file left"
    );
    let o = run(resume, &[]);
    assert!(o.status.success(), "{case}: {}", text(&o));
    assert!(
        text(&o).contains(&format!("resumed from iteration {kept}")),
        "{case}: {}",
        text(&o)
    );
    assert_same_tensors(&resume.join("checkpoint.bpk"), &reference(1), case);
}

/// Set where a small tmpfs cannot be mounted (not root): the full-disk test then runs its
/// injected case alone instead of failing.
const NO_TMPFS: &str = "SWAV_FAULTS_NO_TMPFS";

#[test]
fn a_full_disk_during_a_checkpoint_stops_with_the_previous_checkpoint_intact() {
    let reference = reference(1);
    let dir = tempfile::tempdir().expect("temp dir");

    // Everywhere: the operating system's ENOSPC injected into the checkpoint of iteration 6.
    let out = dir.path().join("injected");
    let o = run(&out, &["--inject-fault", "enospc-checkpoint@5"]);
    stopped_by_a_full_disk(&o, &out, &out, "injected ENOSPC");

    // Where a small tmpfs can be mounted (root): a disk that really fills up. Room for the run
    // folder's other files (as large as the finished run's), two checkpoints and half of a
    // third: the third, written before the oldest goes, does not fit.
    let mnt = dir.path().join("small-disk");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let ckpt_len = std::fs::metadata(&reference)
        .expect("reference checkpoint")
        .len();
    let others: u64 = std::fs::read_dir(reference.parent().expect("run folder"))
        .expect("run folder")
        .map_while(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with("checkpoint"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len().div_ceil(4096) * 4096)
        .sum();
    let size_kib = (ckpt_len * 5 / 2 + others + 48 * 1024) / 1024;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // Skipped only when asked: a machine that cannot mount one says so (`.ci/run` sets the
        // variable where it is not root, and says so in its log).
        assert!(
            std::env::var_os(NO_TMPFS).is_some(),
            "a small tmpfs cannot be mounted here (needs root); the real full-disk case did not \
             run. Set {NO_TMPFS}=1 to run the injected case alone"
        );
        eprintln!("{NO_TMPFS} is set and no tmpfs can be mounted: the injected case ran alone");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let out = mnt.join("run");
    let o = run(&out, &[]);
    // Space comes back: the run folder moves to a disk with room, and resumes there.
    let moved = dir.path().join("moved");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&out)
        .arg(&moved)
        .status()
        .expect("cp");
    assert!(cp.success());
    stopped_by_a_full_disk(&o, &out, &moved, "a full tmpfs");
}

#[test]
fn nan_and_infinity_in_the_loss_or_a_gradient_stop_the_run_and_keep_a_good_checkpoint() {
    let reference = reference(1);
    for (fault, what) in [
        ("nan-loss@5", "loss NaN"),
        ("inf-loss@7", "loss inf"),
        ("nan-grad@5", "the gradients of"),
        ("inf-grad@8", "the gradients of"),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("run");
        let at: u64 = fault[fault.find('@').expect("@") + 1..].parse().expect("n");
        let o = run(&out, &["--inject-fault", fault]);
        let t = text(&o);
        assert!(!o.status.success(), "{fault}: the run must stop: {t}");
        assert!(t.contains(what), "{fault}: {t}");
        assert!(
            t.contains(&format!("iteration {} (batch", at - 1)),
            "{fault}: the step is named: {t}"
        );
        if fault.contains("grad") {
            assert!(t.contains("update was not applied"), "{fault}: {t}");
            assert!(
                t.contains("backbone."),
                "{fault}: the parameter is named: {t}"
            );
        }
        // The last checkpoint is the one before the fault, it is named, and it is finite.
        let ckpt = out.join("checkpoint.bpk");
        let kept = checkpoint_iteration(&ckpt);
        assert!(kept < at, "{fault}: checkpoint at {kept}");
        assert!(
            t.contains(&format!("iteration {kept}, before this step")),
            "{fault}: {t}"
        );
        for (name, bits) in tensors(&ckpt) {
            let finite = bits
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
            assert!(finite, "{fault}: {name} is not finite");
        }
        // Without the fault, the same command resumes from it and ends as if nothing happened.
        let o = run(&out, &[]);
        assert!(o.status.success(), "{fault}: {}", text(&o));
        assert_same_tensors(&ckpt, &reference, fault);
    }
}

#[test]
fn a_truncated_newest_checkpoint_falls_back_and_a_foreign_one_is_refused() {
    let reference = reference(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let o = run(&out, &["--stop-after", "7"]);
    assert!(o.status.success(), "{}", text(&o));
    let ckpt = out.join("checkpoint.bpk");
    let prev = out.join("checkpoint.prev.bpk");
    let newest = checkpoint_iteration(&ckpt);
    let before = checkpoint_iteration(&prev);
    assert!(before < newest);
    // Cut the newest short, as a copy interrupted or a machine dying mid-write would.
    let bytes = std::fs::read(&ckpt).expect("read");
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).expect("truncate");
    let o = run(&out, &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("resumed from the one before it"),
        "the fallback is said: {t}"
    );
    assert!(
        t.contains(&format!("resumed from iteration {before}")),
        "{t}"
    );
    assert_same_tensors(&ckpt, &reference, "truncated newest checkpoint");

    // A foreign file (not a checkpoint at all) given to resume from: refused by name, and the
    // run folder's own checkpoint is left as it was.
    let foreign = dir.path().join("foreign.bpk");
    std::fs::write(&foreign, b"PK\x03\x04 a zip archive, not a checkpoint").expect("w");
    let untouched = std::fs::read(&ckpt).expect("read");
    let o = run(&out, &["--resume", &foreign.display().to_string()]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&foreign.display().to_string()),
        "the file is named: {t}"
    );
    assert_eq!(
        std::fs::read(&ckpt).expect("read"),
        untouched,
        "nothing overwritten"
    );
}
