use super::*;
use futures::AsyncReadExt;
use tokio::io::AsyncWriteExt;

/// Two devices in two sites, whose downlinks run at `rate`; nothing
/// else limits or delays them.
fn downlink_only(rate: u64) -> Scenario {
    Scenario {
        devices: 2,
        sites: 2,
        device_down_bps: rate,
        device_up_bps: 1 << 40,
        origin_up_bps: 1 << 40,
        site_wan_bps: 1 << 40,
        lan_latency_ms: 0,
        wan_latency_ms: 0,
        ..Scenario::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_per_second_download_bucket_holds_a_transfer_to_that_rate() {
    const RATE: u64 = 1024 * 1024;
    const BYTES: usize = 2 * 1024 * 1024;
    let net = NetModel::new(&downlink_only(RATE));
    let (mut shaped, mut far) = origin_connection(&net).await;
    let sender = tokio::spawn(async move {
        far.write_all(&vec![7u8; BYTES]).await.unwrap();
        far.shutdown().await.unwrap();
    });
    let started = Instant::now();
    let mut got = Vec::new();
    shaped.read_to_end(&mut got).await.unwrap();
    let took = started.elapsed().as_secs_f64();
    sender.await.unwrap();
    assert_eq!(got.len(), BYTES);
    // A lower bound only (a slow machine is slower, never faster): the
    // bucket's 0.1 s burst aside, 2 MiB at 1 MiB/s takes 1.9 s.
    let theory = BYTES as f64 / RATE as f64;
    assert!(took >= 0.8 * theory, "{took:.2} s < 0.8 × {theory} s");
    // 127.0.0.1 is outside every site: the origin, over the WAN.
    assert_eq!(net.site_wan_in()[0], BYTES as u64);
    assert_eq!(net.site_wan_in()[1], 0);
    assert_eq!(net.from_origin(), BYTES as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_listener_learns_its_dialer_from_the_hello_and_charges_its_site() {
    const BYTES: usize = 300 * 1024;
    let s = Scenario {
        devices: 4,
        sites: 2,
        lan_latency_ms: 0,
        wan_latency_ms: 0,
        ..Scenario::default()
    };
    let net = NetModel::new(&s);
    // Device 3 (site 1) listens on memory port 77; device 0 (site 0)
    // dials it. The shaper does not care what carries the bytes, so a
    // loopback socket pair stands in for the memory channel.
    net.listening(77, 3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dial = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    let mut dialer = net.shaper(0).shape(
        Box::new(libp2p::tcp::tokio::TcpStream(dial)),
        ConnInfo::Memory {
            listener_port: 77,
            dialer: true,
        },
    );
    let mut listening = net.shaper(3).shape(
        Box::new(libp2p::tcp::tokio::TcpStream(accepted)),
        ConnInfo::Memory {
            listener_port: 77,
            dialer: false,
        },
    );
    let payload: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        use futures::AsyncWriteExt as _;
        dialer.write_all(&sent).await.unwrap();
        dialer.close().await.unwrap();
    });
    let mut got = Vec::new();
    listening.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    // The 4-byte hello is taken off and charged to nobody.
    assert_eq!(got, payload);
    assert_eq!(net.site_wan_out(), vec![BYTES as u64, 0]);
    assert_eq!(net.site_wan_in(), vec![0, BYTES as u64]);
    // A device, not the origin.
    assert_eq!(net.from_origin(), 0);
}

#[test]
fn device_addresses_name_their_site_and_index_and_the_origin_is_outside() {
    for (devices, sites) in [(10, 3), (1000, 20), (600, 2)] {
        for d in 0..devices {
            let ip = device_ip(d, sites);
            assert_eq!(
                endpoint_of(ip, sites, devices),
                Endpoint::Device {
                    site: d % sites,
                    index: d
                }
            );
        }
    }
    assert_eq!(endpoint_of(Ipv4Addr::LOCALHOST, 3, 10), Endpoint::Outside);
}

/// Device 0 reads over the origin's link (127.0.0.1 is outside every
/// site) from a fresh loopback socket, shaped.
async fn origin_connection(net: &Arc<NetModel>) -> (Box<dyn ShapedIo>, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let sock = tokio::net::TcpStream::connect(server_addr).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    let info = ConnInfo::Tcp {
        local: sock.local_addr().unwrap(),
        remote: server_addr,
        dialer: true,
    };
    let shaped = net
        .shaper(0)
        .shape(Box::new(libp2p::tcp::tokio::TcpStream(sock)), info);
    (shaped, accepted)
}
