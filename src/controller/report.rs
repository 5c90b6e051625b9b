//! What the controller tells about an ImageCollection: its status, written with server-side
//! apply, and Events, each note cut to what the Events API accepts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::children::MANAGER;
use super::error::{Error, Result};
use super::reconcile::Context;
use crate::crd::{ImageCollection, ImageCollectionStatus};

/// The generation this pass acts on (0 for an object the API server has not numbered).
pub(super) fn generation(ic: &ImageCollection) -> i64 {
    ic.metadata.generation.unwrap_or(0)
}

pub(super) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Writes `status` as the controller's (server-side apply of the status subresource).
pub(super) async fn write_status(
    context: &Context,
    ic: &ImageCollection,
    status: &ImageCollectionStatus,
) -> Result<()> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ImageCollection> = Api::namespaced(context.client.clone(), &namespace);
    let patch = json!({ "apiVersion": "imgsearch.io/v1alpha1", "kind": "ImageCollection", "status": status });
    api.patch_status(&ic.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// events.k8s.io/v1 refuses a note over 1 kB (1,024 bytes, not characters).
const EVENT_NOTE_MAX_BYTES: usize = 1024;

/// The longest prefix of `text` within `max` bytes that ends on a character boundary.
fn truncate_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Records an Event about `ic`. One that cannot be recorded (a namespace being deleted refuses
/// new Events) is logged at debug level and not retried: Events are a courtesy, status is the record.
pub(super) async fn publish(context: &Context, ic: &ImageCollection, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate_bytes(note, EVENT_NOTE_MAX_BYTES).to_string()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = context.recorder.publish(&event, &ic.object_ref(&())).await {
        tracing::debug!(%error, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_to_1024_bytes_on_a_character_boundary() {
        let ascii = "x".repeat(2000);
        assert_eq!(truncate_bytes(&ascii, EVENT_NOTE_MAX_BYTES).len(), 1024);
        // 'é' is 2 bytes and '€' 3: 1,023 bytes of 'x' then a character that would cross 1,024.
        for wide in ["é", "€", "😀"] {
            let text = format!("{}{}", "x".repeat(1023), wide.repeat(10));
            let cut = truncate_bytes(&text, EVENT_NOTE_MAX_BYTES);
            assert_eq!(cut, "x".repeat(1023), "{wide}: cut before the character, not inside it");
        }
        let many = "é".repeat(1000); // 2,000 bytes, 1,000 characters: a character limit would pass it
        assert_eq!(truncate_bytes(&many, EVENT_NOTE_MAX_BYTES).chars().count(), 512);
        assert_eq!(truncate_bytes("short", EVENT_NOTE_MAX_BYTES), "short");
    }
}
