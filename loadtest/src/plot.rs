//! Small SVG charts for the storm report: lines over time and bars. Plain
//! SVG text, so a report is a Markdown file and a few images that any
//! browser or code host shows.

use std::fmt::Write as _;

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];
const W: f64 = 800.0;
const H: f64 = 360.0;
const PAD: f64 = 55.0;

fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str, max_x: f64, max_y: f64) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{PAD}" y="20" font-size="14">{title}</text>
<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="black"/>
<text x="{r}" y="{xl}" text-anchor="end">{x_label} (to {max_x:.0})</text>
<text x="8" y="{PAD}" >{y_label}</text>
<text x="{yt}" y="{PAD}" text-anchor="end">{max_y:.1}</text>
<text x="{yt}" y="{b}" text-anchor="end">0</text>
"#,
        b = H - PAD,
        r = W - PAD / 2.0,
        xl = H - PAD + 30.0,
        yt = PAD - 4.0,
    );
}

/// Line series over a shared x axis (seconds of the run).
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, &Vec<(f64, f64)>)],
) -> String {
    let points = || series.iter().flat_map(|(_, v)| v.iter());
    let max_x = points().map(|p| p.0).fold(1.0, f64::max);
    let max_y = points()
        .map(|p| p.1)
        .filter(|y| y.is_finite())
        .fold(1e-9, f64::max);
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label, max_x, max_y);
    for (i, (name, values)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = values
            .iter()
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    PAD + x / max_x * (W - 1.5 * PAD),
                    H - PAD - y / max_y * (H - 2.0 * PAD)
                )
            })
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                path.join(" ")
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.0}" y="{:.0}" fill="{color}">{name}</text>"#,
            PAD + 10.0 + (i % 4) as f64 * 170.0,
            H - 8.0 - (i / 4) as f64 * 14.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Labelled bars.
pub fn bars(title: &str, values: &[(String, f64)]) -> String {
    let max_y = values.iter().map(|v| v.1).fold(1.0, f64::max);
    let mut out = String::new();
    frame(&mut out, title, "", "", values.len() as f64, max_y);
    let slot = (W - 1.5 * PAD) / values.len().max(1) as f64;
    for (i, (label, v)) in values.iter().enumerate() {
        let h = v / max_y * (H - 2.0 * PAD);
        let x = PAD + i as f64 * slot + slot * 0.15;
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.0}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            H - PAD - h,
            slot * 0.7,
            COLORS[0],
            x + slot * 0.35,
            H - PAD - h - 4.0,
            x + slot * 0.35,
            H - PAD + 16.0
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_scale_to_the_largest_value_and_skip_what_is_not_finite() {
        let a = vec![(0.0, 1.0), (10.0, 4.0), (20.0, f64::NAN)];
        let svg = lines("t", "s", "ms", &[("a", &a)]);
        assert!(
            svg.contains(">4.0</text>"),
            "the y axis tops at the maximum"
        );
        assert_eq!(svg.matches("<polyline").count(), 1);
        let points = svg.split("points=\"").nth(1).unwrap_or_default();
        assert_eq!(
            points
                .split('"')
                .next()
                .unwrap_or_default()
                .split(' ')
                .count(),
            2
        );
    }

    #[test]
    fn bars_are_one_per_value_with_their_label() {
        let svg = bars("f", &[("Pending".into(), 10.0), ("Completed".into(), 7.0)]);
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains(">Completed</text>"));
    }
}
