//! Latency percentile plot as a hand-written SVG: x = percentile on a "nines" scale
//! (log10(1 / (1 - q))), y = latency in µs on a log scale.

use hdrhistogram::Histogram;
use std::fmt::Write;

const W: f64 = 800.0;
const H: f64 = 480.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
/// Up to 99.999%.
const MAX_NINES: f64 = 5.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn latency_svg(h: &Histogram<u64>, title: &str) -> String {
    let mut pts: Vec<(f64, f64)> = Vec::new();
    if !h.is_empty() {
        for k in 0..=100 {
            let nines = MAX_NINES * k as f64 / 100.0;
            let q = 1.0 - 10f64.powf(-nines);
            pts.push((nines, h.value_at_quantile(q).max(1) as f64));
        }
    }
    let ymax_v = pts.iter().map(|p| p.1).fold(1.0, f64::max).max(10.0);
    let ymax = ymax_v.log10().ceil().max(1.0);
    let px = |n: f64| L + (W - L - R) * n / MAX_NINES;
    let py = |v: f64| H - B - (H - T - B) * (v.max(1.0).log10() / ymax);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    // Grid and labels.
    for (n, label) in [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ] {
        let x = px(n);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            H - B,
            H - B + 18.0
        );
    }
    for e in 0..=(ymax as i32) {
        let v = 10f64.powi(e);
        let y = py(v);
        let label = match e {
            0..=2 => format!("{} µs", v as u64),
            3..=5 => format!("{} ms", v as u64 / 1000),
            _ => format!("{} s", v as u64 / 1_000_000),
        };
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        (L + W - R) / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency</text>"#,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0
    );
    if !pts.is_empty() {
        let poly: Vec<String> = pts
            .iter()
            .map(|&(n, v)| format!("{:.1},{:.1}", px(n), py(v)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
            poly.join(" ")
        );
    } else {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no samples</text>"#,
            W / 2.0,
            H / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_polyline() {
        let mut h = crate::stats::new_hist();
        for v in 1..10_000u64 {
            h.record(v).unwrap();
        }
        let s = latency_svg(&h, "t <x>");
        assert!(s.starts_with("<svg"));
        assert!(s.contains("<polyline"));
        assert!(s.contains("t &lt;x&gt;"));
        assert!(latency_svg(&crate::stats::new_hist(), "e").contains("no samples"));
    }
}
