//! Leader election with a `coordination.k8s.io/v1` Lease, so two controller replicas can run and
//! only one reconciles. The same protocol as client-go's leaderelection:
//!
//! - the holder renews `spec.renewTime` every `retry_every` (2 s), each call bounded by what is
//!   left of `renew_deadline`;
//! - a candidate takes the lease when it is free (no holder) or when the lease record has not
//!   changed for `lease_duration` *as measured by the candidate's own clock* since it first saw
//!   that version — clocks of different nodes are never compared;
//! - every write is an update with the observed `resourceVersion`, so two candidates racing for
//!   an expired lease cannot both win (the loser gets 409 Conflict);
//! - a holder that has not renewed for `renew_deadline` (10 s) stops leading (the process exits
//!   and is restarted). The deadline counts from when the last successful renewal was *sent*,
//!   and a standby waits `lease_duration` (15 s) from when it *saw* that renewal, which came
//!   later: so the old leader has stopped at least 5 s before a standby can start.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique per replica: the pod name in a cluster.
    pub identity: String,
    /// How long a standby waits after the lease last changed before taking it over.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal. Must be well below
    /// `lease_duration`: the gap is the margin against two leaders.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby checks whether the lease became free.
    pub retry_every: Duration,
}

impl LeaseSettings {
    /// client-go's defaults (kube-controller-manager's too): 15 s lease, 10 s renew deadline,
    /// 2 s retry period.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        }
    }

    /// Why these settings could let two replicas lead at once, if they could (client-go's
    /// NewLeaderElector checks the same).
    pub fn problem(&self) -> Option<String> {
        if self.renew_deadline >= self.lease_duration {
            return Some(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_every.mul_f64(1.2) >= self.renew_deadline {
            return Some(format!(
                "the retry period ({:?}) must be well below the renew deadline ({:?})",
                self.retry_every, self.renew_deadline
            ));
        }
        None
    }
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipLost {
    #[error("lease {lease} is now held by {holder:?}")]
    TakenOver { lease: String, holder: Option<String> },
    #[error("could not renew lease {lease} for {seconds} s: {error}")]
    RenewFailed { lease: String, seconds: u64, error: String },
}

pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The lease version last seen and when (by our clock) it was first seen.
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self { api: Api::namespaced(client, &settings.namespace), settings, observed: None }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Waits until this replica holds the lease. `on_attempt` hears whether the API server
    /// answered each attempt (for readiness).
    pub async fn acquire(&mut self, mut on_attempt: impl FnMut(bool)) {
        let mut standby_logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    on_attempt(true);
                    tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "became leader");
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    on_attempt(true);
                    if !standby_logged {
                        tracing::info!(lease = %self.settings.name, ?holder, "standing by: another replica leads");
                        standby_logged = true;
                    }
                }
                Err(error) => {
                    on_attempt(false);
                    tracing::warn!(lease = %self.settings.name, %error, "could not read or write the leader lease");
                }
            }
            tokio::time::sleep(self.settings.retry_every).await;
        }
    }

    /// Renews the lease until that fails; returns why leadership ended: another holder, or no
    /// successful renewal for `renew_deadline` (each attempt is cut off when the deadline
    /// passes, so a hanging API server cannot keep this replica leading).
    pub async fn hold(&mut self) -> LeadershipLost {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_every).await;
            let sent = Instant::now();
            let deadline = last_renewed + self.settings.renew_deadline;
            let attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await;
            let error = match attempt {
                Ok(Ok(Attempt::Leading)) => {
                    last_renewed = sent;
                    continue;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    return LeadershipLost::TakenOver { lease: self.settings.name.clone(), holder };
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => "the API server did not answer in time".to_string(),
            };
            // Another attempt would end after the deadline: stop now, not later.
            if Instant::now() + self.settings.retry_every >= deadline {
                return LeadershipLost::RenewFailed {
                    lease: self.settings.name.clone(),
                    seconds: last_renewed.elapsed().as_secs(),
                    error,
                };
            }
            tracing::warn!(%error, "lease renewal failed; retrying until the renew deadline");
        }
    }

    /// Gives the lease up on a clean shutdown so a standby takes over at once, not after expiry.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else { return };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        match self.api.replace(&self.settings.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.settings.name, "released the leader lease"),
            Err(error) => tracing::warn!(%error, "could not release the leader lease; it will expire"),
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let settings = &self.settings;
        let duration_seconds = i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX).max(1);
        let Some(mut lease) = self.api.get_opt(&settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    namespace: Some(settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(settings.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(status)) if status.is_already_exists() || status.is_conflict() => {
                    Ok(Attempt::HeldBy(None))
                }
                Err(error) => Err(error),
            };
        };

        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != version) {
            self.observed = Some((version, Instant::now()));
        }
        let first_seen = self.observed.as_ref().map_or_else(Instant::now, |(_, at)| *at);
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(settings.identity.as_str());
        let their_duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(settings.lease_duration, Duration::from_secs);
        let expired = first_seen.elapsed() >= their_duration;
        if holder.is_some() && !mine && !expired {
            return Ok(Attempt::HeldBy(holder));
        }

        if !mine {
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + i32::from(holder.is_some()));
            if let Some(previous) = &holder {
                tracing::info!(lease = %settings.name, %previous, "taking over an expired lease");
            }
        }
        spec.holder_identity = Some(settings.identity.clone());
        spec.lease_duration_seconds = Some(duration_seconds);
        spec.renew_time = Some(now());
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self.api.replace(&settings.name, &PostParams::default(), &lease).await {
            Ok(updated) => {
                self.observe(&updated);
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(Attempt::HeldBy(holder)),
            Err(error) => Err(error),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        self.observed = Some((lease.metadata.resource_version.clone().unwrap_or_default(), Instant::now()));
    }
}

enum Attempt {
    Leading,
    HeldBy(Option<String>),
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::LeaseSettings;
    use std::time::Duration;

    #[test]
    fn the_defaults_leave_a_margin_against_two_leaders() {
        let settings = LeaseSettings::new("ns", "lease", "me");
        assert_eq!(settings.problem(), None);
        assert!(settings.lease_duration - settings.renew_deadline >= Duration::from_secs(5));
        let reckless = LeaseSettings { renew_deadline: Duration::from_secs(15), ..settings.clone() };
        assert!(reckless.problem().is_some_and(|p| p.contains("shorter than the lease duration")));
        let slow = LeaseSettings { retry_every: Duration::from_secs(10), ..settings };
        assert!(slow.problem().is_some_and(|p| p.contains("retry period")));
    }
}
