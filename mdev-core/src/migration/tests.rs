use std::collections::VecDeque;

use super::*;
use MigState::*;

const ALL_FEATURES: u32 = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;

/// Records every arc; fails the arc named in `fail`.
#[derive(Default)]
struct Recorder {
    arcs: Vec<(MigState, MigState)>,
    fail: Option<(MigState, MigState)>,
}

impl MigrationArcs for Recorder {
    fn arc(&mut self, from: MigState, to: MigState) -> Result<(), String> {
        assert!(is_direct_arc(from, to), "walked a non-arc {from} -> {to}");
        self.arcs.push((from, to));
        if self.fail == Some((from, to)) {
            return Err("injected".into());
        }
        Ok(())
    }
}

/// Length of the shortest walk over direct arcs from `a` to `b` where saving states appear
/// only at the ends (or as a run from a saving start), by breadth-first search.
fn bfs_len(a: MigState, b: MigState) -> Option<usize> {
    let mut dist = std::collections::HashMap::new();
    let mut q = VecDeque::new();
    dist.insert(a, 0usize);
    q.push_back(a);
    while let Some(s) = q.pop_front() {
        if s == b {
            return dist.get(&s).copied();
        }
        // Saving states share one data stream: a walk may stay in them from its start
        // (the stream goes on) or enter one as its end, never pass through one between
        // non-saving states.
        if s != a && s.is_saving() && !a.is_saving() {
            continue;
        }
        for n in ALL_STATES {
            if is_direct_arc(s, n) && !dist.contains_key(&n) {
                dist.insert(n, dist[&s] + 1);
                q.push_back(n);
            }
        }
    }
    None
}

/// The whole walk the uAPI takes for `from -> to` on a full-featured device, written out
/// from the kernel's `vfio_from_fsm_table` (`None`: -EINVAL).
fn expected_walk(from: MigState, to: MigState) -> Option<Vec<MigState>> {
    if from == Error || to == Error {
        return if from == to { Some(vec![]) } else { None };
    }
    let v = match (from, to) {
        (a, b) if a == b => vec![],
        (Stop, Running) => vec![RunningP2p, Running],
        (Stop, StopCopy) => vec![StopCopy],
        (Stop, Resuming) => vec![Resuming],
        (Stop, RunningP2p) => vec![RunningP2p],
        (Stop, PreCopy) => vec![RunningP2p, Running, PreCopy],
        (Stop, PreCopyP2p) => vec![RunningP2p, PreCopyP2p],
        (Running, Stop) => vec![RunningP2p, Stop],
        (Running, StopCopy) => vec![RunningP2p, Stop, StopCopy],
        (Running, Resuming) => vec![RunningP2p, Stop, Resuming],
        (Running, RunningP2p) => vec![RunningP2p],
        (Running, PreCopy) => vec![PreCopy],
        (Running, PreCopyP2p) => vec![RunningP2p, PreCopyP2p],
        (StopCopy, Stop) => vec![Stop],
        (StopCopy, Running) => vec![Stop, RunningP2p, Running],
        (StopCopy, Resuming) => vec![Stop, Resuming],
        (StopCopy, RunningP2p) => vec![Stop, RunningP2p],
        (StopCopy, PreCopy | PreCopyP2p) => return None,
        (Resuming, Stop) => vec![Stop],
        (Resuming, Running) => vec![Stop, RunningP2p, Running],
        (Resuming, StopCopy) => vec![Stop, StopCopy],
        (Resuming, RunningP2p) => vec![Stop, RunningP2p],
        (Resuming, PreCopy) => vec![Stop, RunningP2p, Running, PreCopy],
        (Resuming, PreCopyP2p) => vec![Stop, RunningP2p, PreCopyP2p],
        (RunningP2p, Stop) => vec![Stop],
        (RunningP2p, Running) => vec![Running],
        (RunningP2p, StopCopy) => vec![Stop, StopCopy],
        (RunningP2p, Resuming) => vec![Stop, Resuming],
        (RunningP2p, PreCopy) => vec![Running, PreCopy],
        (RunningP2p, PreCopyP2p) => vec![PreCopyP2p],
        (PreCopy, Stop) => vec![Running, RunningP2p, Stop],
        (PreCopy, Running) => vec![Running],
        (PreCopy, StopCopy) => vec![PreCopyP2p, StopCopy],
        (PreCopy, Resuming) => vec![Running, RunningP2p, Stop, Resuming],
        (PreCopy, RunningP2p) => vec![Running, RunningP2p],
        (PreCopy, PreCopyP2p) => vec![PreCopyP2p],
        (PreCopyP2p, Stop) => vec![RunningP2p, Stop],
        (PreCopyP2p, Running) => vec![RunningP2p, Running],
        (PreCopyP2p, StopCopy) => vec![StopCopy],
        (PreCopyP2p, Resuming) => vec![RunningP2p, Stop, Resuming],
        (PreCopyP2p, RunningP2p) => vec![RunningP2p],
        (PreCopyP2p, PreCopy) => vec![PreCopy],
        _ => unreachable!("all pairs are listed"),
    };
    Some(v)
}

/// Put a controller in `s` (reaching ERROR by a failing arc).
fn controller_in(s: MigState) -> MigrationController {
    let mut c = MigrationController::new(ALL_FEATURES);
    if s == Error {
        let mut r = Recorder {
            fail: Some((Running, RunningP2p)),
            ..Default::default()
        };
        assert!(c.set_state(&mut r, Stop).is_err());
    } else {
        c.set_state(&mut Recorder::default(), s).unwrap();
    }
    assert_eq!(c.state(), s);
    c
}

#[test]
fn all_64_requests_match_the_uapi() {
    for from in ALL_STATES {
        for to in ALL_STATES {
            let mut c = controller_in(from);
            let mut r = Recorder::default();
            let got = c.set_state(&mut r, to).map(|t| t.state);
            match expected_walk(from, to) {
                Some(walk) => {
                    assert_eq!(got, Ok(to), "{from} -> {to}");
                    let ends: Vec<_> = r.arcs.iter().map(|a| a.1).collect();
                    assert_eq!(ends, walk, "{from} -> {to} walked {:?}", r.arcs);
                }
                None => {
                    assert_eq!(
                        got,
                        Err(MigrationError::InvalidTransition { from, to }),
                        "{from} -> {to}"
                    );
                    assert!(r.arcs.is_empty(), "a refused request ran arcs");
                    assert_eq!(c.state(), from, "a refused request changed state");
                }
            }
        }
    }
}

#[test]
fn every_walk_is_a_shortest_path() {
    for from in ALL_STATES {
        for to in ALL_STATES {
            if let Some(walk) = expected_walk(from, to) {
                if from != Error {
                    assert_eq!(Some(walk.len()), bfs_len(from, to), "{from} -> {to}");
                }
            } else if from != Error && to != Error {
                // The only refusals between live states are the uAPI's explicit
                // STOP_COPY -> PRE_COPY*: a stream that has reached its final part
                // cannot go back to pre-copy, even though arcs would lead there.
                assert_eq!(from, StopCopy, "{from} -> {to}");
                assert!(matches!(to, PreCopy | PreCopyP2p), "{from} -> {to}");
            }
        }
    }
}

#[test]
fn failed_arc_leaves_error_and_reset_recovers() {
    let mut c = MigrationController::new(ALL_FEATURES);
    let mut r = Recorder {
        fail: Some((RunningP2p, Stop)),
        ..Default::default()
    };
    let err = c.set_state(&mut r, StopCopy).unwrap_err();
    assert!(matches!(
        err,
        MigrationError::ArcFailed {
            from: RunningP2p,
            to: Stop,
            ..
        }
    ));
    assert_eq!(c.state(), Error);
    assert_eq!(r.arcs, vec![(Running, RunningP2p), (RunningP2p, Stop)]);
    assert!(c.set_state(&mut Recorder::default(), Running).is_err());
    c.reset();
    assert_eq!(c.state(), Running);
}

#[test]
fn without_p2p_the_walk_skips_p2p_states() {
    let mut c = MigrationController::new(VFIO_MIGRATION_STOP_COPY);
    let mut r = RecorderNoArcCheck::default();
    assert_eq!(c.set_state(&mut r, StopCopy).map(|t| t.state), Ok(StopCopy));
    assert_eq!(r.0, vec![(Running, Stop), (Stop, StopCopy)]);
    assert!(c.set_state(&mut r, RunningP2p).is_err());
    assert!(c.set_state(&mut r, PreCopy).is_err());
}

#[derive(Default)]
struct RecorderNoArcCheck(Vec<(MigState, MigState)>);
impl MigrationArcs for RecorderNoArcCheck {
    fn arc(&mut self, from: MigState, to: MigState) -> Result<(), String> {
        self.0.push((from, to));
        Ok(())
    }
}

#[test]
fn v1_bits_map_to_v2_and_back() {
    assert_eq!(v1_to_v2(0), Some(Stop));
    assert_eq!(v1_to_v2(1), Some(Running));
    assert_eq!(v1_to_v2(2), Some(StopCopy));
    assert_eq!(v1_to_v2(3), Some(PreCopy));
    assert_eq!(v1_to_v2(4), Some(Resuming));
    assert_eq!(v1_to_v2(5), None);
    assert_eq!(v1_to_v2(6), Some(Error));
    assert_eq!(v1_to_v2(7), None);
    assert_eq!(v1_to_v2(8), None);
    for v in [0, 1, 2, 3, 4, 6] {
        assert_eq!(v2_to_v1(v1_to_v2(v).unwrap()), v);
    }
}

#[test]
fn state_values_round_trip() {
    for s in ALL_STATES {
        assert_eq!(MigState::try_from(u32::from(s)), Ok(s));
    }
    assert!(MigState::try_from(8).is_err());
}

/// A controller in `from` reached by a real walk from RUNNING (so its session is real).
fn walked_to(features: u32, to: MigState) -> (MigrationController, Option<DataStream>) {
    let mut c = MigrationController::new(features);
    let mut r = RecorderNoArcCheck::default();
    let stream = if to == Resuming {
        c.set_state(&mut r, Stop).unwrap();
        c.set_state(&mut r, Resuming).unwrap().stream
    } else {
        c.set_state(&mut r, to).unwrap().stream
    };
    (c, stream)
}

// vfio.h, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: data_fd is returned by the arcs that start
// a data transfer session (RUNNING -> PRE_COPY, RUNNING_P2P -> PRE_COPY_P2P, STOP ->
// STOP_COPY, STOP -> RESUMING) and by no other arc; PRE_COPY -> STOP_COPY goes on in the
// same session (data_fd == -1, as the kernel returns it).
#[test]
fn only_session_starting_arcs_return_a_data_stream() {
    let all = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
    for to in [PreCopy, PreCopyP2p, StopCopy, Resuming] {
        let (c, s) = walked_to(all, to);
        assert!(s.is_some(), "walk to {to} opens a session");
        assert_eq!(c.open_stream(), s);
    }
    for to in [Running, RunningP2p, Stop] {
        let (_, s) = walked_to(all, to);
        assert_eq!(s, None, "walk to {to}");
    }
    // PRE_COPY -> PRE_COPY_P2P -> STOP_COPY: one session throughout, no new handle.
    let (mut c, first) = walked_to(all, PreCopy);
    let first = first.unwrap();
    let mut r = RecorderNoArcCheck::default();
    assert_eq!(c.set_state(&mut r, PreCopyP2p).unwrap().stream, None);
    assert_eq!(c.set_state(&mut r, StopCopy).unwrap().stream, None);
    assert_eq!(c.check_stream(first), Ok(()));
}

// Leaving the session's states ends the session; the old handle is refused (ENODEV),
// whether or not the VMM closed it; a new session gets a new handle.
#[test]
fn an_ended_or_closed_session_refuses_its_handle() {
    let all = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
    let (mut c, s) = walked_to(all, StopCopy);
    let s = s.unwrap();
    let mut r = RecorderNoArcCheck::default();
    c.set_state(&mut r, Stop).unwrap();
    assert_eq!(
        c.check_stream(s),
        Err(MigrationError::StaleStream { stream: s.id() })
    );
    let again = c.set_state(&mut r, StopCopy).unwrap().stream.unwrap();
    assert_ne!(again, s);
    assert_eq!(c.check_stream(again), Ok(()));
    c.close_stream(again);
    assert!(c.check_stream(again).is_err(), "a closed handle is stale");
    assert_eq!(c.state(), StopCopy, "closing does not change the state");
    // A handle made up by the caller is refused.
    let (c, _) = walked_to(all, Resuming);
    assert!(c.check_stream(DataStream::from_id(999)).is_err());
}

// A failed arc (ERROR) and a reset end the session.
#[test]
fn error_and_reset_end_the_session() {
    let all = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
    let (mut c, s) = walked_to(all, PreCopy);
    let s = s.unwrap();
    let mut fail = FailingArc(StopCopy);
    assert!(c.set_state(&mut fail, StopCopy).is_err());
    assert_eq!(c.state(), Error);
    assert!(c.check_stream(s).is_err());
    let (mut c, s) = walked_to(all, Resuming);
    c.reset();
    assert!(c.check_stream(s.unwrap()).is_err());
}

/// Fails every arc into the given state.
struct FailingArc(MigState);
impl MigrationArcs for FailingArc {
    fn arc(&mut self, _from: MigState, to: MigState) -> Result<(), String> {
        if to == self.0 {
            Err("injected".into())
        } else {
            Ok(())
        }
    }
}
