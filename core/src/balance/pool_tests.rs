//! Tests of [`super`]: pool versions, states, weights, slow start.

use super::*;

fn pool(slow: Option<Duration>) -> Pool {
    Pool::for_tests(&[1, 2], slow)
}

#[test]
fn identity_survives_reordering() {
    let a = Pool::for_tests(&[1, 1, 1], None);
    let mut cfg = test_backends(&[1, 1, 1]);
    cfg.reverse();
    let b = Pool::new("t", &cfg, None, &CookieKey::new(b"test"));
    for (i, be) in a.backends().iter().enumerate() {
        let j = b.index_of(be.id).expect("same backend");
        assert_eq!(b.get(j).name, be.name);
        assert_eq!(j, 2 - i);
        assert_eq!(b.find_cookie_id(&be.cookie_id), Some(j));
    }
    assert_eq!(a.find_cookie_id(b"0000000000000000"), None);
}

#[test]
fn drain_refuses_new_clients_but_not_pinned_ones_and_maint_refuses_both() {
    let p = pool(None);
    let b = p.get(0);
    assert!(b.available() && b.available_pinned());
    let g = p.generation();
    p.set_admin(0, AdminState::Drain);
    assert!(p.generation() > g, "schedulers see the change");
    assert!(!b.available() && b.available_pinned());
    assert_eq!(b.state(), AdminState::Drain);
    p.set_admin(0, AdminState::Maint);
    assert!(!b.available() && !b.available_pinned());
    p.set_admin(0, AdminState::Ready);
    // The agent's drain counts the same way; the stricter state applies.
    assert!(p.set_agent(0, AgentUpdate::Admin(AdminState::Drain)));
    assert!(!b.available() && b.available_pinned());
    assert_eq!(b.state(), AdminState::Drain);
    assert_eq!(b.admin(), AdminState::Ready);
}

#[test]
fn the_next_pool_keeps_the_live_state_of_backends_that_stay() {
    let key = CookieKey::new(b"test");
    let before = test_backends(&[1, 1, 1]);
    let p = Pool::new("t", &before, None, &key);
    for _ in 0..3 {
        p.observe(0, false, 1, 3);
    }
    p.set_admin(1, AdminState::Drain);
    p.set_admin(2, AdminState::Drain);
    let guard = p.acquire(2);
    // Backend 1 gets weight 4 in the file; a new one joins; backend 0 moves to the end.
    let mut now = before.clone();
    now[1].weight = 4;
    let added = test_backends(&[1, 1, 1, 1]).pop().unwrap();
    now.push(added);
    now.rotate_left(1);
    let q = p.next("t", &now, &before, None, &key);
    let at = |name: &str| q.find_name(name).unwrap();
    assert!(!q.get(at(&before[0].name)).healthy(), "health kept");
    // The file changed backend 1: its values apply, the operator's drain goes.
    let b1 = q.get(at(&before[1].name));
    assert_eq!((b1.admin(), b1.weight()), (AdminState::Ready, 4));
    let b2 = q.get(at(&before[2].name));
    assert_eq!((b2.admin(), b2.weight()), (AdminState::Drain, 1));
    assert_eq!(
        q.get(at(&before[2].name)).active(),
        1,
        "in flight counted once"
    );
    drop(guard);
    assert_eq!(q.get(at(&before[2].name)).active(), 0);
    let fresh = q.get(q.len() - 2);
    assert!(fresh.healthy() && fresh.active() == 0);
    // The same name at another address is a new backend.
    let mut moved = before.clone();
    moved[0].address = SocketAddr::from(([127, 0, 0, 2], 9000));
    let r = p.next("t", &moved, &before, None, &key);
    assert!(r.get(0).healthy());
}

#[test]
fn weight_set_at_run_time() {
    let p = pool(None);
    let v = p.weights_version();
    p.set_weight(1, 5);
    assert_eq!(p.get(1).weight(), 5);
    assert_eq!(p.get(1).effective_weight(), 5 * WEIGHT_SCALE);
    assert!(p.weights_version() > v);
    p.set_weight(1, 0);
    assert!(!p.get(1).available() && p.get(1).available_pinned());
}

#[test]
fn rise_and_fall_counts() {
    let p = pool(None);
    assert_eq!(p.observe(0, false, 2, 3), Transition::None);
    assert_eq!(p.observe(0, false, 2, 3), Transition::None);
    assert_eq!(p.observe(0, false, 2, 3), Transition::WentDown);
    assert!(!p.get(0).available());
    assert_eq!(p.observe(0, true, 2, 3), Transition::None);
    assert_eq!(p.observe(0, false, 2, 3), Transition::None);
    assert_eq!(p.observe(0, true, 2, 3), Transition::None);
    assert_eq!(p.observe(0, true, 2, 3), Transition::CameUp);
    assert!(p.get(0).available());
}

#[test]
fn slow_start_begins_low_and_ends_full() {
    let p = pool(Some(Duration::from_millis(200)));
    for _ in 0..3 {
        p.observe(1, false, 1, 3);
    }
    p.observe(1, true, 1, 3);
    assert_eq!(p.get(1).effective_weight(), 2 * WEIGHT_SCALE / 10);
    std::thread::sleep(Duration::from_millis(250));
    assert!(!p.tick_slow_start());
    assert_eq!(p.get(1).effective_weight(), 2 * WEIGHT_SCALE);
}

#[test]
fn agent_state_gates_and_scales() {
    let p = pool(None);
    assert!(p.set_agent(1, AgentUpdate::WeightPercent(50)));
    assert_eq!(p.get(1).effective_weight(), WEIGHT_SCALE);
    assert!(p.set_agent(1, AgentUpdate::Admin(AdminState::Drain)));
    assert!(!p.get(1).available());
    p.set_agent(1, AgentUpdate::Admin(AdminState::Ready));
    p.set_agent(1, AgentUpdate::Up(false));
    assert!(!p.get(1).available());
    p.set_agent(1, AgentUpdate::Up(true));
    p.set_agent(1, AgentUpdate::MaxConn(1));
    let p = Arc::new(p);
    let g = p.acquire(1);
    assert!(!p.get(1).available(), "at maxconn");
    drop(g);
    assert!(p.get(1).available());
    assert!(!p.set_agent(1, AgentUpdate::WeightPercent(30_000)));
}

#[test]
fn guard_counts_active() {
    let p = Arc::new(pool(None));
    let g = p.acquire(1);
    let g2 = p.acquire(1);
    assert_eq!(p.get(1).active(), 2);
    drop(g);
    drop(g2);
    assert_eq!(p.get(1).active(), 0);
}

#[test]
fn the_limit_is_configured_or_the_agents() {
    let mut cfg = test_backends(&[1, 1]);
    cfg[0].max_connections = Some(2);
    let p = Pool::new("t", &cfg, None, &CookieKey::new(b"test"));
    let (g1, g2) = (p.try_acquire(0).unwrap(), p.try_acquire(0).unwrap());
    assert!(p.try_acquire(0).is_none(), "at max_connections");
    assert!(!p.get(0).available() && p.get(0).open(), "full, not closed");
    assert!(p.try_acquire(1).is_some(), "no limit on the other");
    p.set_agent(0, AgentUpdate::MaxConn(3));
    assert_eq!(p.get(0).limit(), Some(3), "the agent's maxconn overrides");
    let g3 = p.try_acquire(0).unwrap();
    assert!(p.try_acquire(0).is_none());
    p.set_agent(0, AgentUpdate::MaxConn(0));
    assert_eq!(
        p.get(0).limit(),
        Some(2),
        "0 withdraws it: the configured one again"
    );
    drop((g1, g2, g3));
    assert_eq!(p.get(0).active(), 0);
    assert_eq!(p.get(1).limit(), None);
}
