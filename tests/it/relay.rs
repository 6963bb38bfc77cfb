//! Publishing a run to Redis and serving it again from there with
//! `batchsse relay`: real binary, real `redis-server`, real sockets.

use crate::util::*;

#[test]
fn the_redis_helper_starts_kills_and_restarts_on_the_same_port() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    assert!(redis.ping(), "{}", redis.log());
    let port = redis.port;
    let first = redis.pid();
    redis.kill();
    assert!(!redis.ping(), "a killed server still answers");
    redis.restart();
    assert_eq!(redis.port, port);
    assert!(redis.ping(), "{}", redis.log());
    assert_ne!(redis.pid(), first, "a new process answers");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/0"));
}
