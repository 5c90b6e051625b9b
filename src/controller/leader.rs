//! Leader election with a `coordination.k8s.io/v1` Lease, so two controller replicas can run and
//! only one reconciles. The same protocol as client-go's leaderelection:
//!
//! - the holder renews `spec.renewTime` every `renew_every`;
//! - a candidate takes the lease when it is free (no holder) or when the lease record has not
//!   changed for `lease_duration` *as measured by the candidate's own clock* since it first saw
//!   that version — clocks of different nodes are never compared;
//! - every write is an update with the observed `resourceVersion`, so two candidates racing for
//!   an expired lease cannot both win (the loser gets 409 Conflict);
//! - a holder that cannot renew within `lease_duration` stops leading (the process exits and is
//!   restarted), because by then another replica may have taken over.

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
    pub lease_duration: Duration,
    pub renew_every: Duration,
    /// How often a standby checks whether the lease became free.
    pub retry_every: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, renew every 10 s (well before expiry), retry every 2 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipLost {
    #[error("lease {lease} is now held by {holder:?}")]
    TakenOver { lease: String, holder: Option<String> },
    #[error("could not renew lease {lease} for {seconds} s: {error}")]
    RenewFailed { lease: String, seconds: u64, error: kube::Error },
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

    /// Renews the lease until that fails; returns why leadership ended.
    pub async fn hold(&mut self) -> LeadershipLost {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => last_renewed = Instant::now(),
                Ok(Attempt::HeldBy(holder)) => {
                    return LeadershipLost::TakenOver { lease: self.settings.name.clone(), holder };
                }
                Err(error) if last_renewed.elapsed() >= self.settings.lease_duration => {
                    return LeadershipLost::RenewFailed {
                        lease: self.settings.name.clone(),
                        seconds: last_renewed.elapsed().as_secs(),
                        error,
                    };
                }
                Err(error) => tracing::warn!(%error, "lease renewal failed; retrying while the lease lasts"),
            }
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
