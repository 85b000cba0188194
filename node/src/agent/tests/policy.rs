//! Gate actions, `not_before`, maintenance windows and the inhibitor.

use meshota_protocol::{Action, Group, UpdateState};

use super::super::{InhibitTimeout, Windows};
use super::*;

const DAY: u64 = 86_400;

fn fresh(cfg: AgentConfig) -> Agent {
    let mut a = Agent::new(cfg, Default::default());
    a.handle_boot(SlotStatus::default(), NOW);
    drain(&mut a);
    a
}

fn has(acts: &[AgentAction], f: impl Fn(&AgentAction) -> bool) -> bool {
    acts.iter().any(f)
}

fn is_install(x: &AgentAction) -> bool {
    matches!(x, AgentAction::Install { .. })
}

#[test]
fn a_stop_gate_halts_a_device_that_has_not_installed_yet() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut a = fresh(agent_config(&w));
    a.handle_announcement(w.announce(&m1, 1, 1, Action::Stop), NOW);
    let acts = drain(&mut a);
    assert_eq!(a.phase(), UpdateState::Idle);
    assert!(!has(&acts, |x| matches!(x, AgentAction::Fetch { .. })));

    // Started, then stopped mid-download: the fetch is cancelled.
    a.handle_announcement(w.announce(&m1, 1, 2, Action::InstallAndActivate), NOW);
    assert_eq!(a.phase(), UpdateState::Downloading);
    drain(&mut a);
    a.handle_announcement(w.announce(&m1, 1, 3, Action::Stop), NOW);
    let acts = drain(&mut a);
    assert!(has(&acts, |x| matches!(x, AgentAction::CancelFetch { .. })));
    assert_eq!(a.phase(), UpdateState::Idle);
    // A late fetch result is ignored.
    a.handle_fetch_done(Ok(()), NOW);
    assert_eq!(a.phase(), UpdateState::Idle);
    assert!(!has(&drain(&mut a), is_install));

    // Stopped after downloading: it does not go on to install.
    a.handle_announcement(w.announce(&m1, 1, 4, Action::Download), NOW);
    a.handle_fetch_done(Ok(()), NOW);
    a.handle_announcement(w.announce(&m1, 1, 5, Action::Stop), NOW);
    assert_eq!(a.phase(), UpdateState::Downloaded);
    assert!(!has(&drain(&mut a), is_install));
    // Reopened: it continues.
    a.handle_announcement(w.announce(&m1, 1, 6, Action::Install), NOW);
    assert!(has(&drain(&mut a), is_install));
}

#[test]
fn not_before_defers_the_start_until_then() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut a = fresh(agent_config(&w));
    let release = w.sign_release(&w.release(&m1, 1));
    let mut g = w.gate(&release, 1, Action::InstallAndActivate);
    g.not_before = NOW + 500;
    let ann = w.announce_with(release, &g);
    a.handle_announcement(ann, NOW);
    assert_eq!(a.phase(), UpdateState::Idle);
    assert_eq!(a.poll_timeout(), Some(NOW + 500));
    a.handle_timeout(NOW + 500);
    assert_eq!(a.phase(), UpdateState::Downloading);
}

#[test]
fn a_device_outside_the_gate_share_and_groups_waits() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut cfg = agent_config(&w);
    let mut a = fresh(cfg.clone());
    let release = w.sign_release(&w.release(&m1, 1));
    let mut g = w.gate(&release, 1, Action::InstallAndActivate);
    g.share_bp = 0;
    g.groups = vec![Group::new("canary").unwrap()];
    let ann = w.announce_with(release, &g);
    a.handle_announcement(ann.clone(), NOW);
    assert_eq!(a.phase(), UpdateState::Idle);
    cfg.groups = vec![Group::new("canary").unwrap()];
    let mut canary = fresh(cfg);
    canary.handle_announcement(ann, NOW);
    assert_eq!(canary.phase(), UpdateState::Downloading);
}

#[test]
fn a_device_in_the_prefetch_share_downloads_and_installs_only_when_its_wave_opens() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut a = fresh(agent_config(&w));
    let release = w.sign_release(&w.release(&m1, 1));
    let gate = |seq: u64, share_bp: u16, prefetch_bp: u16| {
        let mut g = w.gate(&release, seq, Action::InstallAndActivate);
        g.share_bp = share_bp;
        g.prefetch_bp = prefetch_bp;
        w.announce_with(release.clone(), &g)
    };
    // Outside the share and the prefetch share: nothing.
    a.handle_announcement(gate(1, 0, 0), NOW);
    assert_eq!(a.phase(), UpdateState::Idle);
    // Inside the prefetch share: a download, and nothing after it.
    a.handle_announcement(gate(2, 0, 10_000), NOW + 1);
    assert_eq!(a.phase(), UpdateState::Downloading);
    assert!(has(&drain(&mut a), |x| matches!(
        x,
        AgentAction::Fetch { .. }
    )));
    a.handle_fetch_done(Ok(()), NOW + 2);
    assert_eq!(a.phase(), UpdateState::Downloaded);
    assert!(!has(&drain(&mut a), is_install));
    // Its wave opens: it installs what it holds, fetching nothing again.
    a.handle_announcement(gate(3, 10_000, 10_000), NOW + 3);
    let acts = drain(&mut a);
    assert!(has(&acts, is_install));
    assert!(!has(&acts, |x| matches!(x, AgentAction::Fetch { .. })));
    assert_eq!(a.phase(), UpdateState::Installing);
}

#[test]
fn the_maintenance_window_defers_install_and_then_proceeds() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut cfg = agent_config(&w);
    cfg.windows = Windows(vec!["02:00-04:00".parse().unwrap()]);
    let mut a = fresh(cfg);
    let day = NOW - NOW % DAY + 10 * DAY;
    let noon = day + 12 * 3600;
    a.handle_announcement(w.announce(&m1, 1, 1, Action::InstallAndActivate), noon);
    // Downloading is not disruptive: it starts at once.
    assert_eq!(a.phase(), UpdateState::Downloading);
    a.handle_fetch_done(Ok(()), noon);
    assert_eq!(a.phase(), UpdateState::Downloaded);
    assert!(!has(&drain(&mut a), is_install));
    let open = day + DAY + 2 * 3600;
    assert_eq!(a.poll_timeout(), Some(open));
    a.handle_timeout(open - 1);
    assert!(!has(&drain(&mut a), is_install));
    a.handle_timeout(open);
    assert!(has(&drain(&mut a), is_install));
    // Installed just as the window closes: activation waits for the next one.
    a.handle_install_done(Ok("a".into()), open + 2 * 3600);
    let acts = drain(&mut a);
    assert_eq!(a.phase(), UpdateState::Installed);
    assert!(!has(&acts, |x| matches!(x, AgentAction::Activate { .. })));
    assert_eq!(a.poll_timeout(), Some(open + DAY));
    a.handle_timeout(open + DAY);
    assert!(has(&drain(&mut a), |x| matches!(
        x,
        AgentAction::Activate { .. }
    )));
}

#[test]
fn the_inhibitor_defers_with_backoff_and_then_proceeds() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut cfg = agent_config(&w);
    cfg.inhibitor = true;
    let mut a = fresh(cfg);
    a.handle_announcement(w.announce(&m1, 1, 1, Action::InstallAndActivate), NOW);
    a.handle_fetch_done(Ok(()), NOW);
    assert!(has(&drain(&mut a), |x| matches!(
        x,
        AgentAction::CheckInhibitor
    )));
    a.handle_inhibitor(Some("operator session open".into()), NOW);
    let acts = drain(&mut a);
    assert_eq!(error_codes(&acts), vec!["E_INHIBITED"]);
    assert!(!has(&acts, is_install));
    assert_eq!(a.poll_timeout(), Some(NOW + 30));
    a.handle_timeout(NOW + 30);
    assert!(has(&drain(&mut a), |x| matches!(
        x,
        AgentAction::CheckInhibitor
    )));
    a.handle_inhibitor(Some("still open".into()), NOW + 30);
    assert!(
        error_codes(&drain(&mut a)).is_empty(),
        "reported once, not per check"
    );
    assert_eq!(
        a.poll_timeout(),
        Some(NOW + 30 + 60),
        "the re-check delay doubles"
    );
    a.handle_timeout(NOW + 90);
    drain(&mut a);
    a.handle_inhibitor(None, NOW + 90);
    assert!(has(&drain(&mut a), is_install));
    assert_eq!(a.state().inhibited_since, None);
    // Activation asks again.
    a.handle_install_done(Ok("a".into()), NOW + 100);
    assert!(has(&drain(&mut a), |x| matches!(
        x,
        AgentAction::CheckInhibitor
    )));
    a.handle_inhibitor(None, NOW + 100);
    assert!(has(&drain(&mut a), |x| matches!(
        x,
        AgentAction::Activate { .. }
    )));
}

#[test]
fn an_inhibitor_that_never_clears_cannot_wedge_the_device() {
    for policy in [InhibitTimeout::Fail, InhibitTimeout::Proceed] {
        let w = world();
        let rig = Rig::new();
        let (_, m1) = rig.payload(1);
        let mut cfg = agent_config(&w);
        cfg.inhibitor = true;
        cfg.max_inhibit = 3600;
        cfg.on_inhibit_timeout = policy;
        let mut a = fresh(cfg);
        a.handle_announcement(w.announce(&m1, 1, 1, Action::InstallAndActivate), NOW);
        a.handle_fetch_done(Ok(()), NOW);
        let mut now = NOW;
        let mut codes = Vec::new();
        let mut installed = false;
        for _ in 0..100 {
            let acts = drain(&mut a);
            codes.extend(error_codes(&acts));
            installed |= has(&acts, is_install);
            if !has(&acts, |x| matches!(x, AgentAction::CheckInhibitor)) {
                break;
            }
            a.handle_inhibitor(Some("stuck".into()), now);
            if let Some(t) = a.poll_timeout() {
                now = t;
                a.handle_timeout(now);
            }
        }
        assert!(
            codes.contains(&"E_INHIBIT_TIMEOUT".to_string()),
            "{policy:?}: {codes:?}"
        );
        assert!(
            now <= NOW + 3600 + 900,
            "{policy:?}: gave up late, at +{}",
            now - NOW
        );
        match policy {
            InhibitTimeout::Fail => {
                assert_eq!(a.phase(), UpdateState::Failed);
                assert!(!installed);
            }
            InhibitTimeout::Proceed => assert!(installed),
        }
    }
}
