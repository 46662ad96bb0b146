use super::*;

/// A DNS server on loopback in the test's own namespace: answers the first query, sends
/// garbage for the second and nothing for the rest.
#[test]
fn answers_garbage_and_silence_are_told_apart() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let std::net::SocketAddr::V4(addr) = server.local_addr().unwrap() else {
        unreachable!()
    };
    let responder = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        for i in 0..3 {
            let (len, from) = server.recv_from(&mut buf).unwrap();
            let query = Message::from_vec(&buf[..len]).unwrap();
            match i {
                0 => {
                    let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
                    answer.add_queries(query.queries.clone());
                    server.send_to(&answer.to_vec().unwrap(), from).unwrap();
                }
                1 => {
                    server.send_to(b"not dns", from).unwrap();
                }
                _ => {}
            }
        }
    });
    let spec = BatchSpec {
        count: 3,
        rate: 100.0,
        timeout: Duration::from_millis(300),
        ..BatchSpec::default()
    };
    let result = query_batch(None, addr.into(), &spec).unwrap();
    responder.join().unwrap();
    assert_eq!((result.sent, result.answered, result.lost), (3, 1, 2));
    assert_eq!(result.bad_answers, 1);
    assert!(matches!(
        result.queries[0].outcome,
        Outcome::Answered {
            rcode: ResponseCode::NoError,
            ..
        }
    ));
    assert_eq!(result.lost_queries().count(), 2);
}

#[test]
fn bad_specs_are_refused() {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 53));
    let no_names = BatchSpec {
        names: vec![],
        ..BatchSpec::default()
    };
    assert!(matches!(
        query_batch(None, addr, &no_names),
        Err(Error::Spec { .. })
    ));
    let zero_rate = BatchSpec {
        rate: 0.0,
        ..BatchSpec::default()
    };
    assert!(matches!(
        query_batch(None, addr, &zero_rate),
        Err(Error::Spec { .. })
    ));
    let bad_name = BatchSpec {
        names: vec!["a..b".to_owned()],
        ..BatchSpec::default()
    };
    assert!(matches!(
        query_batch(None, addr, &bad_name),
        Err(Error::Name { .. })
    ));
}

#[test]
fn percentiles_use_nearest_rank() {
    let rec = |ms| SentQuery {
        id: 0,
        name: "x".into(),
        qtype: RecordType::A,
        source_port: 1,
        sent_at: Duration::ZERO,
        outcome: Outcome::Answered {
            latency: Duration::from_millis(ms),
            rcode: ResponseCode::NoError,
            addresses: vec![],
        },
    };
    let result = BatchResult {
        started: SystemTime::now(),
        sent: 4,
        answered: 4,
        lost: 0,
        bad_answers: 0,
        queries: vec![rec(4), rec(1), rec(3), rec(2)],
    };
    assert_eq!(
        result.latency_percentile(50.0),
        Some(Duration::from_millis(2))
    );
    assert_eq!(
        result.latency_percentile(99.0),
        Some(Duration::from_millis(4))
    );
}
