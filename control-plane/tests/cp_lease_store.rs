//! The control-plane lease row (`store::cp_lease`) on both backends: of replicas racing for
//! a free lease exactly one wins; an expired lease passes to another replica under a new
//! term; a stale holder can neither renew nor release it; a released lease is free at once.

mod common;

use std::time::Duration;

#[tokio::test]
async fn concurrent_acquires_have_exactly_one_winner() {
    for t in common::stores().await {
        let s = &t.store;
        for round in 0..3 {
            let attempts = (0..8).map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.cp_lease_acquire(&format!("replica-{round}-{i}"), 60_000)
                        .await
                })
            });
            let mut winners = Vec::new();
            for attempt in futures::future::join_all(attempts).await {
                if let Some(row) = attempt.expect("task").expect("store answers") {
                    winners.push(row);
                }
            }
            if round == 0 {
                assert_eq!(winners.len(), 1, "{}: {winners:?}", t.backend);
                assert_eq!(winners[0].term, 1, "{}", t.backend);
                assert!(winners[0].is_live(), "{}", t.backend);
                let seen = s.cp_lease_get().await.expect("read").expect("row");
                assert_eq!(seen.holder, winners[0].holder, "{}", t.backend);
            } else {
                // Held for a minute: nobody else gets it.
                assert!(winners.is_empty(), "{}: {winners:?}", t.backend);
            }
        }
        t.finish().await;
    }
}

#[tokio::test]
async fn an_expired_lease_passes_on_and_the_stale_holder_cannot_renew() {
    for t in common::stores().await {
        let s = &t.store;
        let a = s
            .cp_lease_acquire("a", 300)
            .await
            .expect("store")
            .expect("a free lease is granted");
        assert_eq!(a.expires_at_ms - a.now_ms, 300, "{}", t.backend);
        assert!(s.cp_lease_acquire("b", 300).await.expect("store").is_none());
        // The holder renews within its lease.
        let renewed = s
            .cp_lease_renew("a", a.term, 300)
            .await
            .expect("store")
            .expect("the holder renews");
        assert_eq!(renewed.term, a.term, "a renewal keeps the term");
        assert!(renewed.expires_at_ms >= a.expires_at_ms);
        // Another replica cannot renew what it does not hold, whatever term it names.
        assert!(s
            .cp_lease_renew("b", a.term, 300)
            .await
            .expect("store")
            .is_none());

        tokio::time::sleep(Duration::from_millis(400)).await;
        let seen = s.cp_lease_get().await.expect("read").expect("row");
        assert!(!seen.is_live(), "{}: expired: {seen:?}", t.backend);
        let b = s
            .cp_lease_acquire("b", 60_000)
            .await
            .expect("store")
            .expect("an expired lease is granted");
        assert_eq!(
            b.term,
            a.term + 1,
            "{}: a new holder, a new term",
            t.backend
        );
        // The stale holder's renewal and release both fail; b keeps it.
        assert!(s
            .cp_lease_renew("a", a.term, 300)
            .await
            .expect("store")
            .is_none());
        assert!(!s.cp_lease_release("a", a.term).await.expect("store"));
        let seen = s.cp_lease_get().await.expect("read").expect("row");
        assert_eq!((seen.holder.as_str(), seen.term), ("b", b.term));
        assert!(seen.is_live());

        // Released: free at once, under yet another term.
        assert!(s.cp_lease_release("b", b.term).await.expect("store"));
        let c = s
            .cp_lease_acquire("c", 60_000)
            .await
            .expect("store")
            .expect("a released lease is granted");
        assert_eq!(c.term, b.term + 1);
        t.finish().await;
    }
}
