//! Many streams in one session, end to end between two in-memory
//! connections: order and integrity under loss, flow control per stream
//! under the session's, fairness, resets, stops, limits, and the peer
//! violations that end a session.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::conn::{CloseReason, Connection, SessionConfig};
use super::frame;
use super::streams::{StreamError, StreamId};

/// Two connections with the keys of one handshake: `a` its initiator.
fn pair(cfg: &SessionConfig, now: Instant) -> (Connection, Connection) {
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let a = Connection::new(cfg, true, addr, 2, [1; 32], [2; 32], None, now);
    let b = Connection::new(cfg, false, addr, 1, [2; 32], [1; 32], None, now);
    (a, b)
}

/// A link between them: a deterministic share of packets lost each way,
/// a millisecond per step, timers run.
struct Link {
    cfg: SessionConfig,
    a: Connection,
    b: Connection,
    now: Instant,
    loss_per_mille: u64,
    rng: u64,
    /// Packets carried, each way.
    packets: u64,
}

impl Link {
    fn new(cfg: SessionConfig, loss_per_mille: u64) -> Link {
        let now = Instant::now();
        let (a, b) = pair(&cfg, now);
        Link { cfg, a, b, now, loss_per_mille, rng: 0x9e37_79b9_7f4a_7c15, packets: 0 }
    }

    fn lost(&mut self) -> bool {
        // xorshift64: the same losses every run.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 1000 < self.loss_per_mille
    }

    /// One step: each side sends what it has (up to 64 packets), the other
    /// takes what survived; then time moves on.
    fn step(&mut self) {
        for from_a in [true, false] {
            for _ in 0..64 {
                let (tx, _) = if from_a { (&mut self.a, &mut self.b) } else { (&mut self.b, &mut self.a) };
                let Some(mut p) = tx.poll_transmit(&self.cfg, self.now) else { break };
                self.packets += 1;
                if self.lost() {
                    continue;
                }
                let rx = if from_a { &mut self.b } else { &mut self.a };
                rx.handle_packet(&self.cfg, self.now, &mut p);
            }
        }
        self.now += Duration::from_millis(1);
        for c in [&mut self.a, &mut self.b] {
            if c.poll_timeout().is_some_and(|t| t <= self.now) {
                c.handle_timeout(&self.cfg, self.now);
            }
        }
    }
}

/// Bytes of stream `s`, position `i`: every stream's content differs.
fn byte(s: u64, i: usize) -> u8 {
    (i as u64).wrapping_mul(31).wrapping_add(s.wrapping_mul(97)) as u8
}

#[test]
fn sixteen_streams_arrive_whole_and_in_order_under_loss() {
    let mut l = Link::new(SessionConfig::default(), 30);
    let len = 100_000;
    let mut ids = Vec::new();
    for _ in 0..100 {
        l.step();
        if l.a.open_room(false) >= 16 {
            break;
        }
    }
    for _ in 0..16 {
        ids.push(l.a.open_stream(&l.cfg, false).expect("the peer allows 100"));
    }
    assert_eq!(ids.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=16).map(|k| 4 * k).collect::<Vec<_>>());
    let mut written = [0usize; 16];
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); 16];
    let mut accepted = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    for _ in 0..20_000 {
        for (k, id) in ids.iter().enumerate() {
            if written[k] < len {
                let chunk: Vec<u8> = (written[k]..len.min(written[k] + 8192)).map(|i| byte(id.0, i)).collect();
                written[k] += l.a.write(&l.cfg, *id, &chunk).expect("open");
                if written[k] == len {
                    l.a.finish(*id).expect("finish once");
                }
            }
        }
        l.step();
        while let Some(id) = l.b.accept_stream(false) {
            accepted.push(id);
        }
        for id in &accepted {
            let k = ids.iter().position(|x| x == id).expect("a stream a opened");
            loop {
                let n = l.b.read(&l.cfg, *id, &mut buf).expect("readable");
                if n == 0 {
                    break;
                }
                got[k].extend_from_slice(&buf[..n]);
            }
        }
        if accepted.iter().all(|id| l.b.recv_finished(*id)) && accepted.len() == 16 {
            break;
        }
    }
    assert_eq!(accepted, ids, "accepted in the order opened");
    for (k, id) in ids.iter().enumerate() {
        assert_eq!(got[k].len(), len, "{id} length");
        assert!(got[k].iter().enumerate().all(|(i, b)| *b == byte(id.0, i)), "{id} content");
        assert!(l.b.recv_finished(*id));
    }
    assert!(l.a.stats.packets_lost > 0, "the link lost packets");
    // Both halves of each stream ended: b still holds its halves towards
    // a (never finished); a's halves are done once acknowledged.
    for _ in 0..200 {
        l.step();
    }
    assert!(ids.iter().all(|id| l.a.send_done(*id)));
}

#[test]
fn ended_streams_make_room_for_new_ones() {
    let cfg = SessionConfig { max_streams_uni: 4, ..SessionConfig::default() };
    let mut l = Link::new(cfg, 0);
    l.step();
    assert_eq!(l.a.open_room(true), 4);
    let (mut opened, mut done, mut limited) = (0, 0, 0);
    let mut buf = [0u8; 16];
    for _ in 0..2_000 {
        while l.a.open_room(true) > 0 && opened < 40 {
            let id = l.a.open_stream(&l.cfg, true).expect("room");
            opened += 1;
            assert!(id.is_uni());
            l.a.write(&l.cfg, id, b"one message").expect("open");
            l.a.finish(id).expect("once");
        }
        if l.a.open_room(true) == 0 {
            assert_eq!(l.a.open_stream(&l.cfg, true), Err(StreamError::Limit));
            limited += 1;
        }
        l.step();
        while let Some(id) = l.b.accept_stream(true) {
            assert_eq!(
                l.b.write(&l.cfg, id, b"x"),
                Err(StreamError::WrongDirection),
                "nothing goes back on a uni stream"
            );
            let n = l.b.read(&l.cfg, id, &mut buf).expect("readable");
            assert_eq!(&buf[..n], b"one message");
            assert!(l.b.recv_finished(id));
            assert_eq!(l.b.read(&l.cfg, id, &mut buf), Err(StreamError::Unknown), "forgotten once read to its end");
            done += 1;
        }
        if done == 40 {
            break;
        }
    }
    assert_eq!(done, 40, "ten times the limit, as streams end");
    assert!(limited > 0, "the limit held a while");
    assert!(l.b.stream_count() <= 1, "only stream 0 left: {}", l.b.stream_count());
}

#[test]
fn a_stream_nobody_reads_does_not_block_the_others() {
    let mut l = Link::new(SessionConfig::default(), 0);
    l.step();
    let stuck = l.a.open_stream(&l.cfg, false).expect("room");
    let moving = l.a.open_stream(&l.cfg, false).expect("room");
    let data = vec![7u8; 1 << 20];
    let (mut stuck_written, mut moved) = (0usize, 0usize);
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..5_000 {
        stuck_written += l.a.write(&l.cfg, stuck, &data).expect("open");
        l.a.write(&l.cfg, moving, &data).expect("open");
        l.step();
        while l.b.accept_stream(false).is_some() {}
        loop {
            let n = l.b.read(&l.cfg, moving, &mut buf).expect("readable");
            moved += n;
            if n == 0 {
                break;
            }
        }
        if moved >= 20 << 20 {
            break;
        }
    }
    // The unread stream stopped at its own window; the other went on past
    // the session's window several times over.
    let held = l.b.readable(stuck) as u64;
    assert_eq!(held, l.cfg.stream_receive_window, "the stuck stream holds its window, no more");
    assert!(moved >= 20 << 20, "moved {moved}");
    assert!(stuck_written > held as usize);
    // Reading it lets it move again.
    let before = l.b.readable(stuck);
    while l.b.read(&l.cfg, stuck, &mut buf).expect("readable") > 0 {}
    for _ in 0..50 {
        l.step();
    }
    assert!(l.b.readable(stuck) > 0 && before > 0);
}

#[test]
fn a_small_stream_is_not_starved_by_a_bulk_one() {
    let mut l = Link::new(SessionConfig::default(), 0);
    l.step();
    let bulk = l.a.open_stream(&l.cfg, true).expect("room");
    let small = l.a.open_stream(&l.cfg, true).expect("room");
    assert_eq!(l.a.write(&l.cfg, bulk, &vec![1u8; 4 << 20]), Ok(4 << 20));
    l.a.write(&l.cfg, small, b"hello").expect("open");
    l.a.finish(small).expect("once");
    let mut steps = 0;
    let mut bulk_read = 0;
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..2_000 {
        l.step();
        steps += 1;
        while l.b.accept_stream(true).is_some() {}
        while let Ok(n @ 1..) = l.b.read(&l.cfg, bulk, &mut buf) {
            bulk_read += n;
        }
        if l.b.readable(small) == 5 {
            break;
        }
    }
    assert_eq!(l.b.readable(small), 5);
    assert!(bulk_read < 1 << 20, "the small stream waited for {bulk_read} bulk bytes ({steps} steps)");
}

#[test]
fn a_reset_reaches_the_reader_and_frees_the_sessions_window() {
    let mut l = Link::new(SessionConfig::default(), 0);
    l.step();
    let id = l.a.open_stream(&l.cfg, false).expect("room");
    l.a.write(&l.cfg, id, &vec![3u8; 3 << 20]).expect("open");
    for _ in 0..100 {
        l.step();
    }
    assert!(l.b.readable(id) > 0 || l.b.accept_stream(false) == Some(id));
    l.a.reset(id, 7).expect("open");
    assert_eq!(l.a.write(&l.cfg, id, b"more"), Err(StreamError::Finished));
    for _ in 0..20 {
        l.step();
    }
    let mut buf = [0u8; 100];
    assert_eq!(l.b.read(&l.cfg, id, &mut buf), Err(StreamError::Reset(7)));
    assert_eq!(l.b.read(&l.cfg, id, &mut buf), Err(StreamError::Reset(7)), "until the stream is forgotten");
    // b's own half is still open (bidirectional): ending it ends the stream.
    l.b.finish(id).expect("b's half is open");
    for _ in 0..20 {
        l.step();
    }
    assert_eq!(l.b.read(&l.cfg, id, &mut buf), Err(StreamError::Unknown), "forgotten");
    assert!(l.a.recv_finished(id), "a saw b's end");
    // The dropped bytes count as read: stream 0 can use the whole window.
    let data = vec![5u8; 8 << 20];
    let mut moved = 0;
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..2_000 {
        let w = l.a.write(&l.cfg, StreamId::MAIN, &data).expect("open");
        let _ = w;
        l.step();
        while let Ok(n @ 1..) = l.b.read(&l.cfg, StreamId::MAIN, &mut buf) {
            moved += n;
        }
        if moved >= 8 << 20 {
            break;
        }
    }
    assert!(moved >= 8 << 20, "moved {moved}");
    for _ in 0..20 {
        l.step();
    }
    assert!(l.a.send_done(id), "the reset was acknowledged and the stream forgotten");
}

#[test]
fn stopping_a_stream_makes_the_writer_fail_with_the_code() {
    let mut l = Link::new(SessionConfig::default(), 0);
    l.step();
    let id = l.a.open_stream(&l.cfg, true).expect("room");
    l.a.write(&l.cfg, id, b"unwanted").expect("open");
    l.step();
    assert_eq!(l.b.accept_stream(true), Some(id));
    l.b.stop(id, 42).expect("open");
    // b sends STOP_SENDING; a takes it before it can answer.
    let mut p = l.b.poll_transmit(&l.cfg, l.now).expect("the stop");
    l.a.handle_packet(&l.cfg, l.now, &mut p);
    assert_eq!(l.a.write(&l.cfg, id, b"x"), Err(StreamError::Stopped(42)));
    assert_eq!(l.a.finish(id), Err(StreamError::Stopped(42)));
    for _ in 0..20 {
        l.step();
    }
    assert!(l.a.send_done(id), "answered with a reset, acknowledged");
    assert_eq!(l.a.stream_count(), 1, "and forgotten");
    assert_eq!(l.b.readable(id), 0);
    assert_eq!(l.b.stream_count(), 1, "stream 0 only");
}

/// Sends `plain` frames from `a` to `b` as a sealed packet.
fn inject(l: &mut Link, frames: impl FnOnce(&mut Vec<u8>)) {
    let mut plain = Vec::new();
    frames(&mut plain);
    let mut p = l.a.seal(&l.cfg, l.now, plain);
    l.b.handle_packet(&l.cfg, l.now, &mut p);
}

#[test]
fn peers_that_break_the_stream_rules_end_the_session() {
    type Case = (&'static str, Box<dyn FnOnce(&mut Vec<u8>)>);
    let cases: Vec<Case> = vec![
        ("a stream beyond the limit we allowed", Box::new(|p| frame::put_stream(p, 4 * 100, 0, b"x", false))),
        ("a frame for a stream never opened", Box::new(|p| frame::put_stream(p, 1, 0, b"x", false))),
        ("stream data on a stream we only send on", Box::new(|p| frame::put_stream(p, 3, 0, b"x", false))),
        ("a limit for a stream we only receive on", Box::new(|p| frame::put_max_stream_data(p, 2, 9))),
        ("stream data beyond our limit", Box::new(|p| frame::put_stream(p, 4, 4 << 20, b"x", false))),
        (
            "stream data beyond the session's limit",
            Box::new(|p| {
                // Two streams each within its own window, over the session's.
                frame::put_stream(p, 4, (4 << 20) - 1, b"x", false);
                frame::put_stream(p, 8, (4 << 20) - 1, b"x", false);
                frame::put_stream(p, 12, (4 << 20) - 1, b"x", false);
            }),
        ),
        ("stream data beyond its end", Box::new(|p| frame::put_reset_stream(p, 4, 1, 0))),
    ];
    for (want, frames) in cases {
        let mut l = Link::new(SessionConfig::default(), 0);
        for _ in 0..3 {
            l.step();
        }
        if want == "stream data beyond its end" {
            // A reset whose final size is below bytes already sent.
            inject(&mut l, |p| frame::put_stream(p, 4, 0, b"abc", false));
        }
        if want == "stream data on a stream we only send on" {
            assert_eq!(l.b.open_stream(&l.cfg, true), Ok(StreamId(3)), "b's first unidirectional stream");
        }
        assert_eq!(l.b.closed, None, "{want}: open before");
        inject(&mut l, frames);
        assert_eq!(l.b.closed, Some(CloseReason::ProtocolViolation(want)), "{want}");
    }
}
