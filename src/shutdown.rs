//! A request to stop, as a value: made from the process's signals (Ctrl-C, SIGTERM) by `main`,
//! or by hand in tests, and passed to every role that runs until told to stop (the search
//! server, the controller, an ingest). Any number of tasks may wait on clones of it.

use tokio::sync::watch;

/// Completes once a stop was requested; clones share the request.
#[derive(Debug, Clone)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
}

/// Requests the stop its [`Shutdown`] waits for (tests, and the signal task).
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }
}

impl Shutdown {
    /// A stop requested only through the returned trigger.
    pub fn manual() -> (ShutdownTrigger, Self) {
        let (sender, requested) = watch::channel(false);
        (ShutdownTrigger { sender }, Self { requested })
    }

    /// A stop never requested (its trigger is dropped at once, which does not count as one).
    pub fn never() -> Self {
        Self::manual().1
    }

    /// Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod). Needs a tokio runtime.
    ///
    /// The listeners are registered here, before the caller goes on, not when the returned value
    /// is first awaited: once tokio handles SIGINT (an earlier listener installs its handler for
    /// the whole process), a signal that arrives before a listener exists is swallowed, so a
    /// server that announced itself and only then registered could miss a Ctrl-C sent in between
    /// (seen: a standalone run that kept serving after SIGINT).
    pub fn on_signals() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        let (trigger, shutdown) = Self::manual();
        tokio::spawn(async move {
            let wait = |listener: std::io::Result<tokio::signal::unix::Signal>| async move {
                match listener {
                    Ok(mut listener) => {
                        listener.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
            tracing::info!("shutdown requested");
            trigger.trigger();
        });
        shutdown
    }

    /// Waits until a stop is requested. If every trigger is gone without one, waits forever:
    /// nobody can ask any more, which is not the same as asking.
    pub async fn requested(&self) {
        let mut requested = self.requested.clone();
        if requested.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_one_request_and_a_dropped_trigger_is_not_one() {
        let (trigger, shutdown) = Shutdown::manual();
        let waiting = [shutdown.clone(), shutdown.clone()].map(|s| tokio::spawn(async move { s.requested().await }));
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), shutdown.requested()).await;
        assert!(early.is_err(), "nothing requested yet");
        trigger.trigger();
        for task in waiting {
            tokio::time::timeout(std::time::Duration::from_secs(5), task).await.expect("woken").expect("no panic");
        }
        let late = tokio::time::timeout(std::time::Duration::from_millis(50), shutdown.requested()).await;
        assert!(late.is_ok(), "a request already made is seen by a waiter that comes after it");

        let (dropped, unrequested) = Shutdown::manual();
        drop(dropped);
        let wait = tokio::time::timeout(std::time::Duration::from_millis(50), unrequested.requested()).await;
        assert!(wait.is_err(), "a trigger going away does not stop anything");
        let never = tokio::time::timeout(std::time::Duration::from_millis(50), Shutdown::never().requested()).await;
        assert!(never.is_err());
    }
}
