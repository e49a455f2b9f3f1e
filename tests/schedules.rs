//! Learning-rate schedules beyond cosine/linear/constant against transformers' `get_scheduler`
//! (scripts/schedule_reference.py): the schedule itself for every case, one case end to end
//! through `burnish train`'s logged learning rates, and the recipe errors of their settings.

mod common;

use burnish::recipe::SchedulerSection;
use burnish::train::schedule::Schedule;
use common::*;

fn cases() -> Vec<serde_json::Value> {
    read_json(&fixtures().join("golden/schedules.json"))["cases"]
        .as_array()
        .unwrap()
        .clone()
}

/// Every step's learning rate within 1e-12 of the peak: the formulas are transformers' own
/// in f64, so only the last bits of their arithmetic may differ.
#[test]
fn schedules_match_transformers() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let section: SchedulerSection = serde_json::from_value(case["scheduler"].clone()).unwrap();
        let peak = case["peak_lr"].as_f64().unwrap();
        let total = case["total_steps"].as_u64().unwrap() as usize;
        let s = Schedule::from_recipe(&section, peak, total);
        for (step, want) in case["lrs"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            assert!(
                (s.lr(step) - want).abs() <= 1e-12 * peak,
                "{name} step {step}: {} vs transformers {want}",
                s.lr(step)
            );
        }
    }
}

/// `burnish train` logs transformers' learning rates for a WSD run with a floor (step n of
/// the log uses the rate of 0-based step n - 1).
#[test]
fn a_training_run_follows_the_schedule() {
    let case = cases()
        .into_iter()
        .find(|c| c["name"] == "wsd_cosine")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut sets = vec![format!("train.optimizer.lr={}", case["peak_lr"])];
    for (key, value) in case["scheduler"].as_object().unwrap() {
        let value = value.as_str().map_or(value.to_string(), str::to_string);
        sets.push(format!("train.scheduler.{key}={value}"));
    }
    let mut args: Vec<&str> = Vec::new();
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let total = case["total_steps"].as_u64().unwrap() as usize;
    train_demo(&out, total, &args);
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let logged: Vec<f64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["lr"].as_f64().unwrap())
        .collect();
    let want: Vec<f64> = case["lrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(logged.len(), want.len());
    for (step, (a, b)) in logged.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-12 * 2e-4,
            "step {}: {a} vs {b}",
            step + 1
        );
    }
}

/// Each schedule's own settings are refused under another, WSD needs its decay's length, and
/// the values are checked, each naming its key.
#[test]
fn schedule_settings_are_checked() {
    let validate = |sets: &[&str]| {
        let mut args = vec!["validate", "recipes/demo.yaml"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let o = burnish(&args);
        (o.status.code(), stderr(&o))
    };
    for (sets, needles) in [
        (
            &[
                "train.scheduler.name=cosine",
                "train.scheduler.power=2",
                "train.scheduler.decay_steps=3",
            ][..],
            &[
                "train.scheduler.power: applies to name polynomial only, not cosine",
                "train.scheduler.decay_steps: applies to name warmup_stable_decay only, not cosine",
            ][..],
        ),
        (
            &["train.scheduler.name=warmup_stable_decay"][..],
            &["train.scheduler.decay_steps: warmup_stable_decay needs the length of its decay"][..],
        ),
        (
            &[
                "train.scheduler.name=warmup_stable_decay",
                "train.scheduler.decay_steps=4",
                "train.scheduler.decay_ratio=1.5",
            ][..],
            &["train.scheduler.decay_ratio: set decay_steps or decay_ratio, not both"][..],
        ),
        (
            &[
                "train.scheduler.name=warmup_stable_decay",
                "train.scheduler.decay_ratio=1.5",
            ][..],
            &["train.scheduler.decay_ratio: 1.5 is not in (0, 1]"][..],
        ),
        (
            &["train.scheduler.decay_type=sqrt"][..],
            &[
                "train.scheduler.decay_type: 'sqrt' is not one of cosine, linear, 1-sqrt (did you mean '1-sqrt'?)",
            ][..],
        ),
        (
            &[
                "train.scheduler.name=inverse_sqrt",
                "train.scheduler.min_lr=1e-6",
                "train.scheduler.timescale=0",
            ][..],
            &[
                "train.scheduler.min_lr: inverse_sqrt decays without a floor",
                "train.scheduler.timescale: must be at least 1 step",
            ][..],
        ),
        (
            &[
                "train.scheduler.name=cosine_with_restarts",
                "train.scheduler.num_cycles=-1",
            ][..],
            &["train.scheduler.num_cycles: -1 is not a positive number"][..],
        ),
        (
            &["train.scheduler.name=wsd"][..],
            &[
                "'wsd' is not one of cosine, cosine_with_min_lr, linear, constant, constant_with_warmup, cosine_with_restarts, polynomial, inverse_sqrt, warmup_stable_decay",
            ][..],
        ),
    ] {
        let (code, err) = validate(sets);
        assert_eq!(code, Some(2), "{sets:?}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
    // transformers' other names for the same schedules are accepted.
    for name in ["constant_with_warmup", "cosine_with_min_lr"] {
        let (code, err) = validate(&[&format!("train.scheduler.name={name}")]);
        assert_eq!(code, Some(0), "{name}: {err}");
    }
}
