//! Stage actors: a linked child that runs one piece of a request's work
//! (processing, analysis, verification, one workflow step, a resume check,
//! a rollback) and reports the result to its parent, then stops. The work
//! runs as a task the actor owns, so its handler awaits nothing and a kill
//! aborts the work. A panic in the work fails the actor; the parent sees
//! `ActorFailed` and applies the [`RestartPolicy`]. The work is a factory,
//! so a restarted stage starts it afresh. The work logs under the span
//! the actor was spawned in (its request's): a task inherits none.
//!
//! [`RestartPolicy`]: crate::children::RestartPolicy

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use tracing::Instrument;

use crate::mailbox::{Envelope, Inbox};
use crate::metrics::{ActorKind, Metrics};
use crate::tasks::Task;

pub type Work<T> = Arc<dyn Fn() -> BoxFuture<'static, T> + Send + Sync>;
pub type Report<T> = Box<dyn FnOnce(T) + Send>;

/// Fault injection for tests and game days: the next `times` actors of
/// kind `panic_in` panic before doing their work. Off unless configured.
#[derive(Clone, Debug, Default)]
pub struct Chaos {
    pub panic_in: Option<ActorKind>,
    pub times: Arc<AtomicU32>,
}

impl Chaos {
    pub fn panics(kind: ActorKind, times: u32) -> Self {
        Self {
            panic_in: Some(kind),
            times: Arc::new(AtomicU32::new(times)),
        }
    }

    pub(crate) fn strikes(&self, kind: ActorKind) -> bool {
        self.panic_in == Some(kind)
            && self
                .times
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }
}

pub struct Worker<T>(PhantomData<fn() -> T>);

pub struct Args<T> {
    inbox: Inbox,
    work: Work<T>,
    report: Report<T>,
    chaos: Chaos,
}

pub struct State<T> {
    inbox: Inbox,
    _live: crate::mailbox::Live,
    work: Work<T>,
    report: Option<Report<T>>,
    chaos: Chaos,
    running: Option<Task>,
    span: tracing::Span,
}

pub enum Run<T> {
    Start,
    /// The work's task ended: its result, or what its panic said.
    Done(Result<T, String>),
}

impl<T: Send + 'static> Actor for Worker<T> {
    type Msg = Envelope<Run<T>>;
    type State = State<T>;
    type Arguments = Args<T>;

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope<Run<T>>>,
        args: Args<T>,
    ) -> Result<State<T>, ActorProcessingErr> {
        let live = args.inbox.started();
        args.inbox.addr(myself).tell(Run::Start);
        Ok(State {
            inbox: args.inbox,
            _live: live,
            work: args.work,
            report: Some(args.report),
            chaos: args.chaos,
            running: None,
            // pre_start runs in the spawner's task, within its span.
            span: tracing::Span::current(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Envelope<Run<T>>>,
        env: Envelope<Run<T>>,
        st: &mut State<T>,
    ) -> Result<(), ActorProcessingErr> {
        let (msg, _handling) = st.inbox.open(env);
        match msg {
            Run::Start => {
                if st.chaos.strikes(st.inbox.kind) {
                    panic!("injected fault: {:?} actor panics", st.inbox.kind);
                }
                let me = st.inbox.addr(myself);
                let work = tokio::spawn((st.work)().instrument(st.span.clone()));
                // Killing this actor drops its state, which aborts the work.
                st.running = Some(Task::of(work.abort_handle()));
                tokio::spawn(async move {
                    let out = work.await.map_err(|e| match e.try_into_panic() {
                        Ok(p) => p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "the work panicked".into()),
                        Err(_) => "the work was cancelled".into(),
                    });
                    me.tell(Run::Done(out));
                });
                Ok(())
            }
            Run::Done(Ok(out)) => {
                if let Some(report) = st.report.take() {
                    report(out);
                }
                myself.stop(None);
                Ok(())
            }
            Run::Done(Err(panic)) => Err(panic.into()),
        }
    }
}

/// Spawns a stage actor linked to `parent`; its id identifies it in the
/// parent's supervision events.
pub async fn spawn<T: Send + 'static>(
    kind: ActorKind,
    metrics: &Metrics,
    chaos: &Chaos,
    work: Work<T>,
    report: Report<T>,
    parent: ActorCell,
) -> Result<ActorCell, SpawnErr> {
    let args = Args {
        inbox: Inbox::new(metrics, kind),
        work,
        report,
        chaos: chaos.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, Worker(PhantomData), args, parent).await?;
    Ok(actor.get_cell())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use futures::FutureExt;
    use ractor::SupervisionEvent;

    use super::*;

    /// Log lines, as the control plane's subscriber writes them.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Parent;

    impl Actor for Parent {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle_supervisor_evt(
            &self,
            _: ActorRef<()>,
            _: SupervisionEvent,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stage_actors_work_logs_under_the_span_it_was_spawned_in() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // A current-thread runtime: every task runs where this is the default.
        let _default = tracing::subscriber::set_default(subscriber);
        let (parent, _) = Actor::spawn(None, Parent, ()).await.unwrap();
        let metrics = Metrics::register(&mut Default::default());
        let (tx, done) = tokio::sync::oneshot::channel();
        let work: Work<()> = Arc::new(|| async { tracing::warn!("the stage's work ran") }.boxed());
        spawn(
            ActorKind::processing,
            &metrics,
            &Chaos::default(),
            work,
            Box::new(move |()| {
                let _ = tx.send(());
            }),
            parent.get_cell(),
        )
        .instrument(tracing::info_span!("request", name = "rr-7"))
        .await
        .unwrap();
        done.await.unwrap();
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("the stage's work ran"))
            .unwrap_or_else(|| panic!("no line of the work in {text}"));
        assert!(
            line.contains("request{name=\"rr-7\"}"),
            "the work's line lacks its request: {line}"
        );
        parent.stop(None);
    }
}
