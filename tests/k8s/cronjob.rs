//! The CronJob controller's part the fake API server plays: which minute a schedule fires at
//! (robfig/cron v3's standard grammar, as kube-controller-manager parses it) and the Job it
//! makes then (cronjob_controllerv2's getJobFromTemplate2). Schedules are evaluated in UTC;
//! `@every`, `spec.timeZone` other than UTC and `startingDeadlineSeconds` are not emulated
//! (the README lists it).

use k8s_openapi::jiff::{Timestamp, tz::TimeZone};
use serde_json::{Value, json};

/// Whether `schedule` fires at the minute `at` falls in (UTC); an error for what this
/// emulation does not understand.
pub fn schedule_matches(schedule: &str, at: Timestamp) -> Result<bool, String> {
    let expanded = match schedule.trim() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other if other.starts_with('@') => return Err(format!("descriptor {other} is not emulated")),
        other => other,
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    let [minute, hour, dom, month, dow] = fields.as_slice() else {
        return Err(format!("{schedule:?} does not have 5 fields"));
    };
    let civil = at.to_zoned(TimeZone::UTC);
    let weekday = i64::from(civil.weekday().to_sunday_zero_offset());
    let (dom, dom_star) = field(dom, 1, 31, &[])?;
    let (dow, dow_star) = field(dow, 0, 6, &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])?;
    let months = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
    let dom_ok = dom.contains(&i64::from(civil.day()));
    let dow_ok = dow.contains(&weekday);
    // robfig/cron: with either day field a star, both must match; otherwise either may.
    let day_ok = if dom_star || dow_star { dom_ok && dow_ok } else { dom_ok || dow_ok };
    Ok(field(minute, 0, 59, &[])?.0.contains(&i64::from(civil.minute()))
        && field(hour, 0, 23, &[])?.0.contains(&i64::from(civil.hour()))
        && field(month, 1, 12, &months)?.0.contains(&i64::from(civil.month()))
        && day_ok)
}

/// The values a field allows, and whether it counts as a star (`*` or `?` without a step
/// above 1), as robfig/cron's getRange decides.
fn field(text: &str, min: i64, max: i64, names: &[&str]) -> Result<(Vec<i64>, bool), String> {
    let value = |part: &str| -> Result<i64, String> {
        if let Some(index) = names.iter().position(|n| n.eq_ignore_ascii_case(part)) {
            return Ok(index as i64 + min);
        }
        part.parse::<i64>().map_err(|_| format!("{part:?} is not a number"))
    };
    let mut values = Vec::new();
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step.parse::<i64>().map_err(|_| format!("bad step in {part:?}"))?)),
            None => (part, None),
        };
        let (start, end) = if range == "*" || range == "?" {
            // Any list element that is a star makes the field one (robfig ORs the bits).
            star |= step.is_none_or(|s| s <= 1);
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let start = value(range)?;
            (start, if step.is_some() { max } else { start })
        };
        let step = step.unwrap_or(1);
        if start < min || end > max || start > end || step < 1 {
            return Err(format!("{part:?} is out of {min}-{max}"));
        }
        values.extend((start..=end).step_by(step as usize));
    }
    Ok((values, star))
}

/// The latest minute in `(after, now]` at which `schedule` fires, looking back at most a week.
pub fn latest_firing(schedule: &str, after: Timestamp, now: Timestamp) -> Result<Option<Timestamp>, String> {
    let mut minute = now.as_second().div_euclid(60) * 60;
    let oldest = (after.as_second().div_euclid(60) * 60 + 60).max(minute - 7 * 24 * 3600);
    while minute >= oldest {
        let at = Timestamp::from_second(minute).map_err(|e| e.to_string())?;
        if schedule_matches(schedule, at)? {
            return Ok(Some(at));
        }
        minute -= 60;
    }
    Ok(None)
}

/// The Job the CronJob controller makes for the run scheduled at `scheduled`.
pub fn job_for(cronjob: &Value, scheduled: Timestamp) -> Value {
    let name = cronjob["metadata"]["name"].as_str().unwrap_or_default();
    let template = &cronjob["spec"]["jobTemplate"];
    let mut annotations = template["metadata"]["annotations"].clone();
    if !annotations.is_object() {
        annotations = json!({});
    }
    annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(scheduled.to_string());
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": format!("{name}-{}", scheduled.as_second() / 60),
            "namespace": cronjob["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "CronJob", "name": name,
                "uid": cronjob["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": template["spec"],
    })
}

/// Whether a Job has finished (a Complete or Failed condition that is True).
pub fn finished(job: &Value) -> Option<&'static str> {
    let conditions = job["status"]["conditions"].as_array()?;
    conditions.iter().find_map(|c| match (c["type"].as_str(), c["status"].as_str()) {
        (Some("Complete"), Some("True")) => Some("Complete"),
        (Some("Failed"), Some("True")) => Some("Failed"),
        _ => None,
    })
}
