//! Network membership through the library API: three members on loopback,
//! each joining with another's card; broadcasts reach every member, and a
//! member that leaves is seen to go.

use std::time::Duration;

use convoke_node::identity::{Identity, PeerId};
use convoke_node::runtime::endpoint::EndpointConfig;
use convoke_node::runtime::network::{CommandError, MAX_PAYLOAD, MemberConfig, MemberEvent, Network};
use convoke_node::runtime::os_rng;
use convoke_node::token::Invitation;

async fn start(join: Option<&Invitation>) -> Network {
    let mut config = MemberConfig { join: join.cloned(), ..MemberConfig::default() };
    // Quick rounds, so the test takes seconds.
    config.overlay.round = 300;
    config.overlay.suspect_after = 1000;
    config.overlay.fail_after = 2000;
    Network::start(Identity::generate(&mut os_rng()), EndpointConfig::loopback(), config).await.expect("start")
}

/// Waits (at most 20 s) for an event of `member` that `want` accepts.
async fn wait_for(member: &Network, what: &str, mut want: impl FnMut(&MemberEvent) -> bool) -> MemberEvent {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match member.next_event().await {
                Some(e) if want(&e) => return e,
                Some(_) => {}
                None => panic!("{what}: the member stopped"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{what}: not within 20 s"))
}

fn message_from(origin: PeerId, text: &'static [u8]) -> impl FnMut(&MemberEvent) -> bool {
    move |e| matches!(e, MemberEvent::Message { origin: o, data, .. } if *o == origin && data == text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_by_card_broadcast_to_all_and_leave() {
    let a = start(None).await;
    let b = start(Some(a.card())).await;
    // c joins with b's card: one invitation is a way into the whole network.
    let c = start(Some(b.card())).await;
    assert_eq!(a.card().inviter(), a.peer_id());
    wait_for(&b, "b joined a", |e| matches!(e, MemberEvent::Joined(p) if *p == a.peer_id())).await;
    wait_for(&c, "c joined b", |e| matches!(e, MemberEvent::Joined(p) if *p == b.peer_id())).await;
    // a hears of c through the overlay (the join is announced), and takes it as a neighbour.
    wait_for(
        &a,
        "a learns of c",
        |e| matches!(e, MemberEvent::MemberJoined { peer, .. } | MemberEvent::NeighborUp(peer) if *peer == c.peer_id()),
    )
    .await;

    a.broadcast(b"from a").expect("broadcast");
    wait_for(&b, "a's broadcast at b", message_from(a.peer_id(), b"from a")).await;
    wait_for(&c, "a's broadcast at c", message_from(a.peer_id(), b"from a")).await;
    c.broadcast(b"from c").expect("broadcast");
    wait_for(&a, "c's broadcast at a", message_from(c.peer_id(), b"from c")).await;
    assert!(!b.neighbours().is_empty(), "b has neighbours");

    // Too large for one frame: refused here, with the size.
    let big = vec![0u8; MAX_PAYLOAD + 1];
    assert_eq!(a.broadcast(&big), Err(CommandError::TooLarge(MAX_PAYLOAD + 1)));

    // c leaves: its neighbours see it go, and its events end.
    let c_id = c.peer_id();
    c.leave();
    let ended = tokio::time::timeout(Duration::from_secs(20), async { while c.next_event().await.is_some() {} }).await;
    assert!(ended.is_ok(), "c's events did not end after leaving");
    wait_for(&b, "b sees c leave", |e| matches!(e, MemberEvent::NeighborDown(p, _) if *p == c_id)).await;
    assert!(c.broadcast(b"too late").is_err(), "a member that left takes no more commands");
}
