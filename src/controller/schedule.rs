//! The cron schedules the Kubernetes CronJob controller accepts, checked before a CronJob is
//! applied: the API server refuses an unparseable schedule with a 422 on every reconcile, and a
//! `TZ=` / `CRON_TZ=` prefix since Kubernetes 1.25 (the time zone is `spec.timeZone`).
//!
//! The grammar is that of `cron.ParseStandard` in github.com/robfig/cron/v3, which the CronJob
//! controller and its validation use: five fields (minute, hour, day of month, month, day of
//! week), each a comma-separated list of `*`, `?`, a value or a range `a-b`, optionally with a
//! step `/n`; months and weekdays also by their three-letter English names; or one of the
//! descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`,
//! `@every <duration>`.

/// Why `schedule` is not a schedule Kubernetes accepts, if it is not.
pub fn schedule_problem(schedule: &str) -> Option<String> {
    let schedule = schedule.trim();
    if schedule.contains("TZ") {
        return Some(format!(
            "{schedule:?}: Kubernetes refuses TZ= and CRON_TZ= in a CronJob schedule; set spec.ingest.timeZone \
             (e.g. Europe/Berlin) instead"
        ));
    }
    if let Some(descriptor) = schedule.strip_prefix('@') {
        return descriptor_problem(descriptor).map(|problem| format!("{schedule:?}: {problem}"));
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Some(format!(
            "{schedule:?} has {} fields; a schedule has 5 (minute hour day-of-month month day-of-week, e.g. \
             \"30 2 * * *\" for 02:30 every day) or is a descriptor such as @hourly or @daily",
            fields.len()
        ));
    }
    FIELDS.iter().zip(fields).find_map(|(field, text)| {
        field.problem(text).map(|problem| format!("{schedule:?}: {} field {text:?}: {problem}", field.name))
    })
}

fn descriptor_problem(descriptor: &str) -> Option<String> {
    const NAMED: [&str; 7] = ["yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly"];
    if NAMED.contains(&descriptor) {
        return None;
    }
    let Some(duration) = descriptor.strip_prefix("every ") else {
        return Some(format!(
            "unknown descriptor @{descriptor}; use one of @{} or @every <duration>",
            NAMED.join(", @")
        ));
    };
    go_duration_problem(duration.trim())
}

/// Go's `time.ParseDuration` grammar: a sequence of decimal numbers with units, e.g. `1h30m`.
fn go_duration_problem(text: &str) -> Option<String> {
    const UNITS: [&str; 7] = ["ns", "us", "µs", "ms", "s", "m", "h"];
    let mut rest = text;
    if rest.is_empty() {
        return Some("@every needs a duration such as 1h30m".into());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        if digits == 0 || rest[..digits].parse::<f64>().is_err() {
            return Some(format!("{text:?} is not a duration such as 1h30m"));
        }
        rest = &rest[digits..];
        // The longest unit that matches ("ms" before "m").
        let Some(unit) = UNITS.iter().filter(|u| rest.starts_with(**u)).max_by_key(|u| u.len()) else {
            return Some(format!(
                "{text:?} is not a duration such as 1h30m: a number needs a unit (ns, us, ms, s, m, h)"
            ));
        };
        rest = &rest[unit.len()..];
    }
    None
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[] },
    Field { name: "hour", min: 0, max: 23, names: &[] },
    Field { name: "day-of-month", min: 1, max: 31, names: &[] },
    Field { name: "month", min: 1, max: 12, names: &MONTHS },
    Field { name: "day-of-week", min: 0, max: 6, names: &WEEKDAYS },
];

impl Field {
    fn problem(&self, text: &str) -> Option<String> {
        text.split(',').find_map(|part| self.part_problem(part))
    }

    fn part_problem(&self, part: &str) -> Option<String> {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(0) => return Some("a step of 0 never advances".into()),
                Ok(_) => {}
                Err(_) => return Some(format!("step {step:?} is not a number")),
            }
        }
        if range == "*" || range == "?" {
            return None;
        }
        let (low, high) = match range.split_once('-') {
            Some((low, high)) => (self.value(low), Some(self.value(high))),
            None => (self.value(range), None),
        };
        let (low, high) = match (low, high) {
            (Ok(low), Some(Ok(high))) => (low, high),
            (Ok(low), None) => (low, if step.is_some() { self.max } else { low }),
            (Err(problem), _) | (_, Some(Err(problem))) => return Some(problem),
        };
        if low > high {
            return Some(format!("range {range:?} runs backwards"));
        }
        None
    }

    /// The value of one number or name.
    fn value(&self, text: &str) -> Result<u32, String> {
        let lower = text.to_ascii_lowercase();
        if let Some(index) = self.names.iter().position(|name| *name == lower) {
            let offset = if self.min == 1 { 1 } else { 0 };
            return Ok(u32::try_from(index).unwrap_or(0) + offset);
        }
        match text.parse::<u32>() {
            Ok(value) if (self.min..=self.max).contains(&value) => Ok(value),
            Ok(value) => Err(format!("{value} is outside {}–{}", self.min, self.max)),
            Err(_) => Err(format!("{text:?} is not a number{}", self.names_hint())),
        }
    }

    fn names_hint(&self) -> String {
        match self.names.first() {
            Some(_) => format!(" or one of {}", self.names.join(", ")),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::schedule_problem;

    /// Schedules robfig/cron's ParseStandard accepts (from its parser_test.go and the
    /// Kubernetes CronJob documentation).
    #[test]
    fn what_kubernetes_accepts_passes() {
        for schedule in [
            "* * * * *",
            "30 2 * * *",
            "*/5 * * * *",
            "0 0 1 1 *",
            "5 0 * 8 *",
            "15 14 1 * *",
            "0 22 * * 1-5",
            "23 0-20/2 * * *",
            "5 4 * * sun",
            "0 0,12 1 */2 *",
            "0 4 8-14 * *",
            "0 0 1,15 * 3",
            "0 0 * JAN-MAR MON",
            "0 0 ? * *",
            "59 23 31 12 6",
            "@hourly",
            "@daily",
            "@midnight",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@every 1h30m",
            "@every 90s",
        ] {
            assert_eq!(schedule_problem(schedule), None, "{schedule:?} is accepted by Kubernetes");
        }
    }

    #[test]
    fn what_kubernetes_refuses_is_refused_with_the_reason() {
        for (schedule, said) in [
            ("TZ=UTC 0 0 * * *", "spec.ingest.timeZone"),
            ("CRON_TZ=Europe/Berlin 0 0 * * *", "TZ="),
            ("* * * *", "has 4 fields"),
            ("0 0 * * * *", "has 6 fields"),
            ("", "has 0 fields"),
            ("60 * * * *", "60 is outside 0–59"),
            ("0 24 * * *", "24 is outside 0–23"),
            ("0 0 0 * *", "0 is outside 1–31"),
            ("0 0 * 13 *", "13 is outside 1–12"),
            ("0 0 * * 7", "7 is outside 0–6"),
            ("*/0 * * * *", "step of 0"),
            ("0 0 * * funday", "not a number or one of sun"),
            ("5-1 * * * *", "runs backwards"),
            ("@fortnightly", "unknown descriptor"),
            ("@every", "unknown descriptor"),
            ("@every 1 hour", "not a duration"),
            ("@every 10", "needs a unit"),
            ("every day", "has 2 fields"),
        ] {
            let problem = schedule_problem(schedule).unwrap_or_else(|| panic!("{schedule:?} is refused"));
            assert!(problem.contains(said), "{schedule:?}: {problem}");
        }
    }
}
