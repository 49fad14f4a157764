//! Prometheus metrics: declared once with their help text, rendered in the text format.

use prometheus_client::{encoding::text::encode, registry::Registry};

/// Registers fields of a metrics struct under their own names:
/// `register!(registry, metrics, { adverts: "BLE adverts received", ... })` is
/// `registry.register("adverts", "BLE adverts received", metrics.adverts.clone())` for each.
#[macro_export]
macro_rules! register {
    ($registry:expr, $metrics:expr, { $($field:ident: $help:expr),* $(,)? }) => {
        $( $registry.register(stringify!($field), $help, $metrics.$field.clone()); )*
    };
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an error would come from a metric's own encoding and
    // only truncate the page, which a scraper reports.
    if encode(&mut out, registry).is_err() {
        tracing::warn!("metrics encoding failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

    #[derive(Default)]
    struct M {
        seen: Counter,
        open: Gauge,
    }

    #[test]
    fn fields_are_registered_under_their_names_with_their_help() {
        let m = M::default();
        let mut r = prometheus_client::registry::Registry::with_prefix("t");
        crate::register!(r, m, {
            seen: "Things seen",
            open: "Things open",
        });
        m.seen.inc_by(3);
        m.open.set(2);
        let text = super::render(&r);
        assert!(text.contains("# HELP t_seen Things seen."), "{text}");
        assert!(text.contains("t_seen_total 3"), "{text}");
        assert!(text.contains("# HELP t_open Things open."), "{text}");
        assert!(text.contains("t_open 2"), "{text}");
    }
}
