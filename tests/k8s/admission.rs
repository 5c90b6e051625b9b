//! What kube-apiserver checks before it stores an object, for the resources the controller
//! writes, so the fake refuses what a real cluster refuses:
//!
//! - object names and labels as k8s.io/apimachinery/pkg/util/validation does (DNS-1123 label and
//!   subdomain, DNS-1035 label for Services, label keys and values, each with its length limit),
//!   with the messages it gives;
//! - batch/v1 validation: an Indexed Job's pod hostnames `<name>-<completions-1>` must be DNS-1123
//!   labels, a Job's name is a label value (≤ 63), a CronJob's name has at most 52 characters
//!   and its schedule must parse, without TZ= / CRON_TZ=;
//! - immutable fields: a Job's selector, template and completion mode; a Deployment's selector;
//! - an ImageCollection's CRD: schema defaults applied and every `x-kubernetes-validations` rule
//!   of the committed CRD evaluated by a real CEL engine (kube-cel, with the Kubernetes CEL
//!   libraries), transition rules against the stored object on updates.

use serde_json::Value;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const LABEL_VALUE_MAX: usize = 63;
const CRONJOB_NAME_MAX: usize = 52;

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `label` is `first` then lowercase alphanumerics and '-', ending alphanumeric: the shape of
/// a DNS-1123 label (`first` alphanumeric) and a DNS-1035 label (`first` a letter).
fn label_shaped(label: &str, first: fn(u8) -> bool) -> bool {
    let bytes = label.as_bytes();
    bytes.first().is_some_and(|b| first(*b))
        && bytes.last().is_some_and(|b| is_alnum(*b))
        && bytes.iter().all(|b| is_alnum(*b) || *b == b'-')
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub fn dns1123_label(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        problems.push(format!("must be no more than {DNS1123_LABEL_MAX} characters"));
    }
    if !label_shaped(value, is_alnum) {
        problems.push(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start \
             and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .into(),
        );
    }
    problems
}

/// Dot-separated DNS-1123 labels, at most 253.
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        problems.push(format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters"));
    }
    if value.is_empty() || !value.split('.').all(|label| label_shaped(label, is_alnum)) {
        problems.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and \
             must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .into(),
        );
    }
    problems
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub fn dns1035_label(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        problems.push(format!("must be no more than {DNS1123_LABEL_MAX} characters"));
    }
    if !label_shaped(value, |b| b.is_ascii_lowercase()) {
        problems.push(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic \
             character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for \
             validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                .into(),
        );
    }
    problems
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// `(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?`, at most 63.
pub fn label_value(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > LABEL_VALUE_MAX {
        problems.push(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    let bytes = value.as_bytes();
    let shaped = bytes.is_empty()
        || (bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes.iter().all(|b| is_name_char(*b)));
    if !shaped {
        problems.push(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used \
             for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
                .into(),
        );
    }
    problems
}

/// A label key: an optional DNS-1123 subdomain prefix and `/`, then a name of at most 63.
pub fn label_key(key: &str) -> Vec<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let mut problems: Vec<String> = prefix.map(dns1123_subdomain).unwrap_or_default();
    if name.is_empty() || name.len() > 63 || !name.bytes().all(is_name_char) {
        problems.push(format!("name part of {key:?} must be 1 to 63 alphanumeric characters, '-', '_' or '.'"));
    } else if !name.as_bytes()[0].is_ascii_alphanumeric() || !name.as_bytes()[name.len() - 1].is_ascii_alphanumeric() {
        problems.push(format!("name part of {key:?} must start and end with an alphanumeric character"));
    }
    problems
}

fn invalid(field: &str, value: &str, problems: Vec<String>) -> Vec<String> {
    problems.into_iter().map(|p| format!("{field}: Invalid value: {value:?}: {p}")).collect()
}

fn labels_problems(field: &str, labels: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in labels.as_object().into_iter().flatten() {
        problems.extend(invalid(field, key, label_key(key)));
        problems.extend(invalid(
            &format!("{field}[{key}]"),
            value.as_str().unwrap_or_default(),
            label_value(value.as_str().unwrap_or_default()),
        ));
    }
    problems
}

/// Why the API server would refuse to create `object` as a `resource`; empty if it would not.
/// NoteLengthLimit of events.k8s.io/v1.
const EVENT_NOTE_MAX_BYTES: usize = 1024;

pub fn creation_problems(resource: &str, object: &Value) -> Vec<String> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let mut problems = match resource {
        "services" => invalid("metadata.name", name, dns1035_label(name)),
        _ => invalid("metadata.name", name, dns1123_subdomain(name)),
    };
    problems.extend(labels_problems("metadata.labels", &object["metadata"]["labels"]));
    problems.extend(spec_problems(resource, object));
    problems
}

/// Checks that hold on every write of a resource's spec.
fn spec_problems(resource: &str, object: &Value) -> Vec<String> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let mut problems = Vec::new();
    match resource {
        // events.k8s.io/v1 (ValidateEventCreate): the note is limited in bytes, not characters.
        "events" => {
            let note = object["note"].as_str().unwrap_or_default();
            if note.len() > EVENT_NOTE_MAX_BYTES {
                problems.push(format!("note: Too long: must have at most {EVENT_NOTE_MAX_BYTES} bytes"));
            }
        }
        "jobs" => problems.extend(job_problems(name, &object["spec"], "spec")),
        "cronjobs" => {
            if name.len() > CRONJOB_NAME_MAX {
                problems.push(format!(
                    "metadata.name: Invalid value: {name:?}: must be no more than {CRONJOB_NAME_MAX} characters"
                ));
            }
            let schedule = object["spec"]["schedule"].as_str().unwrap_or_default();
            if schedule.contains("TZ") {
                problems.push(format!(
                    "spec.schedule: Invalid value: {schedule:?}: cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
                ));
            } else if let Some(problem) = imgsearch::controller::schedule::schedule_problem(schedule) {
                problems.push(format!("spec.schedule: Invalid value: {schedule:?}: {problem}"));
            }
            problems.extend(labels_problems(
                "spec.jobTemplate.metadata.labels",
                &object["spec"]["jobTemplate"]["metadata"]["labels"],
            ));
            problems.extend(labels_problems(
                "spec.jobTemplate.spec.template.metadata.labels",
                &object["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
            ));
        }
        "deployments" => {
            problems.extend(labels_problems(
                "spec.template.metadata.labels",
                &object["spec"]["template"]["metadata"]["labels"],
            ));
            let template = &object["spec"]["template"]["metadata"]["labels"];
            for (key, value) in object["spec"]["selector"]["matchLabels"].as_object().into_iter().flatten() {
                if &template[key] != value {
                    problems.push(format!(
                        "spec.template.metadata.labels: Invalid value: {template}: `selector` does not match template `labels`"
                    ));
                }
            }
        }
        _ => {}
    }
    problems
}

/// batch/v1 ValidateJob: the Job's name goes into its pods' `job-name` label (≤ 63), and an
/// Indexed Job's pods are named `<job>-<index>` as their hostname (a DNS-1123 label).
fn job_problems(name: &str, spec: &Value, field: &str) -> Vec<String> {
    let mut problems =
        labels_problems(&format!("{field}.template.metadata.labels"), &spec["template"]["metadata"]["labels"]);
    if name.len() > LABEL_VALUE_MAX {
        problems.push(format!(
            "metadata.name: Invalid value: {name:?}: must be no more than {LABEL_VALUE_MAX} characters (it is the value of the job-name label)"
        ));
    }
    let completions = spec["completions"].as_i64().unwrap_or(1);
    if spec["completionMode"] == "Indexed" && completions > 0 {
        let hostname = format!("{name}-{}", completions - 1);
        if !dns1123_label(&hostname).is_empty() {
            problems.push(format!(
                "metadata.name: Invalid value: {name:?}: will not able to create pod with invalid DNS label: {hostname}"
            ));
        }
    }
    problems
}

/// Why the API server would refuse to replace `current` by `next`; empty if it would not.
pub fn update_problems(resource: &str, current: &Value, next: &Value) -> Vec<String> {
    let immutable: &[&str] = match resource {
        "jobs" => &["/spec/selector", "/spec/template", "/spec/completionMode", "/spec/completions"],
        "deployments" => &["/spec/selector"],
        _ => &[],
    };
    let mut problems: Vec<String> = immutable
        .iter()
        .filter(|path| current.pointer(path).is_some() && current.pointer(path) != next.pointer(path))
        .map(|path| format!("{}: Invalid value: field is immutable", path.trim_start_matches('/').replace('/', ".")))
        .collect();
    problems.extend(labels_problems("metadata.labels", &next["metadata"]["labels"]));
    problems.extend(spec_problems(resource, next));
    problems
}

/// The committed CRD's schema, compiled once.
fn imagecollection_schema() -> &'static Value {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd: Value = serde_yaml::from_str(include_str!("../../crds/imagecollections.imgsearch.io.yaml"))
            .expect("the committed CRD is YAML");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    })
}

/// An ImageCollection as the API server stores it: schema defaults applied.
pub fn default_imagecollection(object: &Value) -> Value {
    kube_cel::apply_defaults(imagecollection_schema(), object)
}

/// The messages of the committed CRD's CEL rules that `object` breaks (`old` on an update).
pub fn cel_problems(object: &Value, old: Option<&Value>) -> Vec<String> {
    match kube_cel::Validator::new().validate(imagecollection_schema(), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// What the CRD's structural schema made of an object, as kube-apiserver applies it before
/// defaulting and CEL: fields the schema does not declare are pruned (and named, for the
/// `unknown field` warning or, with `fieldValidation=Strict`, the error), and values of the
/// wrong type or outside the schema's enums, bounds, lengths and patterns are problems in the
/// server's wording.
#[derive(Debug, Default)]
pub struct SchemaOutcome {
    pub unknown_fields: Vec<String>,
    pub problems: Vec<String>,
}

/// Applies the committed CRD's openAPIV3Schema to an ImageCollection: prunes `object` in place.
pub fn apply_imagecollection_schema(object: &mut Value) -> SchemaOutcome {
    let mut outcome = SchemaOutcome::default();
    let schema = imagecollection_schema();
    let Some(fields) = object.as_object_mut() else {
        outcome.problems.push("<root>: Invalid value: the object must be a JSON object".into());
        return outcome;
    };
    // apiVersion, kind and metadata are the server's own; the schema covers spec and status.
    let unknown: Vec<String> = fields
        .keys()
        .filter(|key| {
            !["apiVersion", "kind", "metadata"].contains(&key.as_str()) && schema["properties"][key.as_str()].is_null()
        })
        .cloned()
        .collect();
    for key in unknown {
        fields.remove(&key);
        outcome.unknown_fields.push(key);
    }
    for key in ["spec", "status"] {
        if let Some(value) = fields.get_mut(key) {
            walk(&schema["properties"][key], value, key, &mut outcome);
        }
    }
    outcome
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn walk(schema: &Value, value: &mut Value, path: &str, out: &mut SchemaOutcome) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    let actual = json_type(value);
    if let Some(expected) = schema["type"].as_str() {
        let int_or_string = schema["x-kubernetes-int-or-string"] == true && matches!(actual, "integer" | "string");
        let fits = actual == expected || (expected == "number" && actual == "integer") || int_or_string;
        if !fits {
            out.problems.push(format!(
                "{path}: Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let supported: Vec<String> = allowed.iter().map(Value::to_string).collect();
        out.problems.push(format!("{path}: Unsupported value: {value}: supported values: {}", supported.join(", ")));
    }
    match value {
        Value::Object(fields) => {
            for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !fields.contains_key(required) {
                    out.problems.push(format!("{path}.{required}: Required value"));
                }
            }
            let keep_unknown = schema["x-kubernetes-preserve-unknown-fields"] == true;
            let keys: Vec<String> = fields.keys().cloned().collect();
            for key in keys {
                let child_path = format!("{path}.{key}");
                let declared = &schema["properties"][key.as_str()];
                let extra = &schema["additionalProperties"];
                let child_schema = if !declared.is_null() {
                    Some(declared)
                } else if extra.is_object() {
                    Some(extra)
                } else {
                    None
                };
                match child_schema {
                    Some(child_schema) => {
                        if let Some(child) = fields.get_mut(&key) {
                            walk(child_schema, child, &child_path, out);
                        }
                    }
                    None if keep_unknown || *extra == true => {}
                    None => {
                        fields.remove(&key);
                        out.unknown_fields.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            let count = items.len();
            if let Some(max) = schema["maxItems"].as_u64().filter(|max| count as u64 > *max) {
                out.problems.push(format!("{path}: Too many: {count}: must have at most {max} items"));
            }
            if let Some(min) = schema["minItems"].as_u64().filter(|min| (count as u64) < *min) {
                out.problems
                    .push(format!("{path}: Invalid value: {count}: {path} in body should have at least {min} items"));
            }
            for (index, item) in items.iter_mut().enumerate() {
                walk(&schema["items"], item, &format!("{path}[{index}]"), out);
            }
        }
        Value::String(text) => {
            let length = text.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64().filter(|max| length > *max) {
                out.problems.push(format!("{path}: Too long: may not be more than {max} bytes"));
            }
            if let Some(min) = schema["minLength"].as_u64().filter(|min| length < *min) {
                out.problems.push(format!(
                    "{path}: Invalid value: \"{text}\": {path} in body should be at least {min} chars long"
                ));
            }
            if let Some(pattern) = schema["pattern"].as_str() {
                let matches = regex::Regex::new(pattern).map(|re| re.is_match(text)).unwrap_or(false);
                if !matches {
                    out.problems
                        .push(format!("{path}: Invalid value: \"{text}\": {path} in body should match '{pattern}'"));
                }
            }
        }
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or(0.0);
            if let Some(min) = schema["minimum"].as_f64().filter(|min| n < *min) {
                out.problems.push(format!(
                    "{path}: Invalid value: {number}: {path} in body should be greater than or equal to {min}"
                ));
            }
            if let Some(max) = schema["maximum"].as_f64().filter(|max| n > *max) {
                out.problems.push(format!(
                    "{path}: Invalid value: {number}: {path} in body should be less than or equal to {max}"
                ));
            }
        }
        _ => {}
    }
}
