//! Broker files for production: Mosquitto with a password per gateway and ACLs that let each
//! gateway write only its own events and status and read only its own acks and its store's
//! notices, and head office's identity read and write what it needs.
//!
//! In: head office's secret, the gateways (`store,gateway[,generation]` per line: generation 0
//! for gateways enrolled with the secret, the registry's generation for those enrolled with a
//! code), head office's MQTT user and password. Out: `passwd` (Mosquitto's salted SHA-512 `$6$`
//! format; the password of a gateway is its token, which the agent already sends with its id as
//! user name), `acl`, and `instore.conf` that turns both on and anonymous clients off.

use anyhow::{Result, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use instore_protocol::{token::gateway_token_at, topics, topics::valid_id};
use sha2::{Digest, Sha512};

/// A gateway as the broker must know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub store_id: String,
    pub gateway_id: String,
    pub generation: u32,
}

/// Reads `store,gateway[,generation]` lines; `#` starts a comment. Every bad line is named.
pub fn parse_gateways(text: &str) -> Result<Vec<Gateway>> {
    let mut out: Vec<Gateway> = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let (store, gateway, generation) = match fields.as_slice() {
            [s, g] => (*s, *g, Ok(0)),
            [s, g, n] => (*s, *g, n.parse::<u32>()),
            _ => {
                problems.push(format!(
                    "line {}: expected store,gateway[,generation]",
                    i + 1
                ));
                continue;
            }
        };
        if !valid_id(store) || !valid_id(gateway) {
            problems.push(format!(
                "line {}: ids must be 1-64 characters of A-Z a-z 0-9 _ - (no +, # or /)",
                i + 1
            ));
            continue;
        }
        let Ok(generation) = generation else {
            problems.push(format!("line {}: generation is not a number", i + 1));
            continue;
        };
        if out.iter().any(|g| g.gateway_id == gateway) {
            problems.push(format!("line {}: gateway {gateway} listed twice", i + 1));
            continue;
        }
        out.push(Gateway {
            store_id: store.into(),
            gateway_id: gateway.into(),
            generation,
        });
    }
    if !problems.is_empty() {
        bail!(
            "the gateway list has problems:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(out)
}

/// One `passwd` line in Mosquitto's `$6$` format: base64 salt, base64 SHA-512 of password then
/// salt.
pub fn passwd_line(user: &str, password: &str, salt: &[u8; 12]) -> String {
    let mut h = Sha512::new();
    h.update(password.as_bytes());
    h.update(salt);
    format!(
        "{user}:$6${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(h.finalize())
    )
}

/// The three files' contents.
#[derive(Debug)]
pub struct Files {
    pub passwd: String,
    pub acl: String,
    pub conf: String,
}

/// Builds the files for `gateways`, head office connecting as `hq_user` with `hq_password`;
/// `dir` is where Mosquitto will find `passwd` and `acl`.
pub fn files(
    secret: &str,
    gateways: &[Gateway],
    hq_user: &str,
    hq_password: &str,
    dir: &str,
    mut salt: impl FnMut() -> [u8; 12],
) -> Result<Files> {
    if !valid_id(hq_user) || gateways.iter().any(|g| g.gateway_id == hq_user) {
        bail!("head office's MQTT user {hq_user:?} must be a valid id no gateway has");
    }
    let mut passwd = vec![passwd_line(hq_user, hq_password, &salt())];
    let mut acl = vec![
        "# Written by instore-provision mosquitto. Head office: every gateway's events and status,"
            .to_string(),
        "# acks to each, notices to each store.".to_string(),
        format!("user {hq_user}"),
        format!("topic read {}", topics::ALL_EVENTS),
        format!("topic read {}", topics::ALL_STATUS),
        format!("topic write {}", topics::ack("+")),
        format!("topic write {}", topics::members("+")),
        String::new(),
    ];
    for g in gateways {
        let Some(token) =
            gateway_token_at(secret.as_bytes(), &g.store_id, &g.gateway_id, g.generation)
        else {
            bail!("no token for {} of {}", g.gateway_id, g.store_id);
        };
        passwd.push(passwd_line(&g.gateway_id, &token, &salt()));
        acl.extend([
            format!("# gateway {} of store {}", g.gateway_id, g.store_id),
            format!("user {}", g.gateway_id),
            format!("topic write {}", topics::events(&g.gateway_id)),
            format!("topic write {}", topics::status(&g.gateway_id)),
            format!("topic read {}", topics::ack(&g.gateway_id)),
            format!("topic read {}", topics::members(&g.store_id)),
            String::new(),
        ]);
    }
    let conf = format!(
        "# Written by instore-provision mosquitto: include it from mosquitto.conf (include_dir)\n\
         # or append it. Add your listener, with TLS on anything but loopback:\n\
         #   listener 8883\n\
         #   certfile /etc/mosquitto/certs/broker.pem\n\
         #   keyfile /etc/mosquitto/certs/broker.key\n\
         allow_anonymous false\n\
         password_file {dir}/passwd\n\
         acl_file {dir}/acl\n"
    );
    Ok(Files {
        passwd: passwd.join("\n") + "\n",
        acl: acl.join("\n"),
        conf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_list_names_every_bad_line() {
        let ok = parse_gateways("# store,gateway\ns1,g1\ns1, g2 ,3\n\n").unwrap();
        assert_eq!(ok[1].generation, 3);
        assert_eq!(ok[1].gateway_id, "g2");
        let err = parse_gateways("s1,g1\ns/1,g2\ns1,g+\ns1\ns1,g1\ns1,g3,x\n")
            .unwrap_err()
            .to_string();
        for line in ["line 2", "line 3", "line 4", "line 5", "line 6"] {
            assert!(err.contains(line), "{line}: {err}");
        }
    }

    #[test]
    fn a_passwd_line_is_salt_then_sha512_of_password_and_salt() {
        // Checked against Python: base64(sha512(b"pw" + bytes(range(12)))).
        let line = passwd_line("g1", "pw", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(
            line,
            "g1:$6$AAECAwQFBgcICQoL$nJi904LR9MHJuWsrxoeU9OYCwKeAwjEX7WYcVbBePPtrX4Wvr0lZ3vRYd/exlGmyC2Y9jK1b1PhAE1Rwd9Srdw=="
        );
    }

    #[test]
    fn each_gateway_gets_its_own_topics_and_store() {
        let gws = parse_gateways("s1,g1\ns2,g2,2\n").unwrap();
        let f = files(
            "0123456789abcdef",
            &gws,
            "instore-sync",
            "hqpw",
            "/etc/mq",
            || [7; 12],
        )
        .unwrap();
        assert_eq!(f.passwd.lines().count(), 3);
        assert!(
            f.acl
                .contains("user g2\ntopic write instore/v1/gw/g2/events")
        );
        assert!(f.acl.contains("topic read instore/v1/store/s2/members"));
        assert!(!f.acl.contains("user g1\ntopic read instore/v1/store/s2"));
        assert!(f.conf.contains("allow_anonymous false"));
        let err = files("0123456789abcdef", &gws, "g1", "x", "/d", || [0; 12]).unwrap_err();
        assert!(err.to_string().contains("no gateway has"));
    }
}
