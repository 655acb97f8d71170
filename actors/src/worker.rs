//! Stage actors: a linked child that runs one piece of a request's work
//! (processing, analysis, verification, one workflow step, a resume check,
//! a rollback) and reports the result to its parent, then stops. The work
//! runs as a task the actor owns, so its handler awaits nothing and a kill
//! aborts the work. A panic in the work fails the actor; the parent sees
//! `ActorFailed` and applies the [`RestartPolicy`]. The work is a factory,
//! so a restarted stage starts it afresh.
//!
//! [`RestartPolicy`]: crate::children::RestartPolicy

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};

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
                let work = tokio::spawn((st.work)());
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
