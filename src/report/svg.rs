//! Line plots as inline SVG: a title, labelled axes with ticks, one polyline per series, and a
//! shaded band under it where the series has intervals.

use std::fmt::Write;

use super::esc;

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend entry.
    pub name: String,
    /// Its colour (CSS).
    pub colour: String,
    /// (x, y) points, in x order.
    pub points: Vec<(f64, f64)>,
    /// (x, low, high) of an interval around the line, in x order; empty for none.
    pub band: Vec<(f64, f64, f64)>,
}

/// A plot's frame: size, title and axis labels.
#[derive(Debug, Clone)]
pub struct Plot<'a> {
    /// The SVG's `<title>` and the caption drawn above the plot.
    pub title: &'a str,
    /// The x axis's label.
    pub x_label: &'a str,
    /// The y axis's label.
    pub y_label: &'a str,
    /// Width and height in pixels.
    pub size: (f64, f64),
}

/// Round `max` up to a "nice" number of `step`s: (top, step).
fn nice_top(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// Format a tick value without trailing zeros.
fn tick(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The plot as an `<svg>` element: y from 0 to a nice bound above the data, x over the data's
/// range with a tick at each distinct x.
pub fn line_plot(plot: &Plot, series: &[Series], id: &str) -> String {
    let (w, h) = plot.size;
    let (left, right, top, bottom) = (46.0, 10.0, 26.0, 38.0);
    let xs: Vec<f64> = {
        let mut v: Vec<f64> = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    let (x0, x1) = match (xs.first(), xs.last()) {
        (Some(&a), Some(&b)) if b > a => (a, b),
        (Some(&a), _) => (a - 0.5, a + 0.5),
        _ => (0.0, 1.0),
    };
    let y_max = series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.band.iter().map(|b| b.2))
        })
        .filter(|y| y.is_finite())
        .fold(0.0, f64::max);
    let (y1, y_step) = nice_top(y_max);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| top + (1.0 - y / y1) * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="plot" id="{id}" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-labelledby="{id}-title"><title id="{id}-title">{}</title>"#,
        esc(plot.title)
    );
    let _ = write!(
        s,
        r#"<text class="plot-title" x="{}" y="16" text-anchor="middle">{}</text>"#,
        w / 2.0,
        esc(plot.title)
    );
    // Grid and y ticks.
    let mut y = 0.0;
    while y <= y1 + 1e-9 {
        let _ = write!(
            s,
            r#"<line class="grid" x1="{left}" x2="{}" y1="{py:.1}" y2="{py:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            w - right,
            left - 4.0,
            py(y) + 3.5,
            tick(y),
            py = py(y)
        );
        y += y_step;
    }
    for &x in &xs {
        let _ = write!(
            s,
            r#"<text class="tick" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            h - bottom + 14.0,
            tick(x)
        );
    }
    let _ = write!(
        s,
        r#"<line class="axis" x1="{left}" x2="{}" y1="{b}" y2="{b}"/><line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{b}"/>"#,
        w - right,
        b = h - bottom
    );
    let _ = write!(
        s,
        r#"<text class="axis-label" x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (left + w - right) / 2.0,
        h - 6.0,
        esc(plot.x_label)
    );
    let _ = write!(
        s,
        r#"<text class="axis-label" transform="translate(12 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (top + h - bottom) / 2.0,
        esc(plot.y_label)
    );
    // Bands first, so that every line is drawn over them.
    for ser in series {
        let band: Vec<&(f64, f64, f64)> = ser
            .band
            .iter()
            .filter(|b| b.1.is_finite() && b.2.is_finite())
            .collect();
        if band.len() < 2 {
            continue;
        }
        let upper = band
            .iter()
            .map(|b| format!("{:.1},{:.1}", px(b.0), py(b.2)));
        let lower = band
            .iter()
            .rev()
            .map(|b| format!("{:.1},{:.1}", px(b.0), py(b.1)));
        let _ = write!(
            s,
            r#"<polygon class="band" fill="{}" fill-opacity="0.15" stroke="none" points="{}"/>"#,
            ser.colour,
            upper.chain(lower).collect::<Vec<_>>().join(" ")
        );
    }
    for ser in series {
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline class="series" fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            ser.colour,
            pts.join(" ")
        );
        for &(x, y) in ser.points.iter().filter(|p| p.1.is_finite()) {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}: λ = {}, {:.2}</title></circle>"#,
                px(x),
                py(y),
                ser.colour,
                esc(&ser.name),
                tick(x),
                y
            );
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds_cover_the_data() {
        for max in [0.3, 7.0, 42.0, 49.9, 50.0, 99.0, 100.0, 1234.0] {
            let (top, step) = nice_top(max);
            assert!(top >= max && top < max + step + 1e-9, "{max}: {top} {step}");
            assert!((top / step - (top / step).round()).abs() < 1e-9);
        }
    }

    #[test]
    fn a_plot_has_its_title_axes_and_points() {
        let svg = line_plot(
            &Plot {
                title: "dev <all>",
                x_label: "λ",
                y_label: "score",
                size: (300.0, 200.0),
            },
            &[Series {
                name: "run".into(),
                colour: "#1f77b4".into(),
                points: vec![(0.0, 10.0), (1.0, 40.0), (2.0, 30.0)],
                band: vec![(0.0, 8.0, 12.0), (1.0, 35.0, 55.0), (2.0, 27.0, 33.0)],
            }],
            "p1",
        );
        // The band's polygon: up along the highs, back along the lows; drawn under the line,
        // and the y axis reaches its top (55 → 60).
        let band = svg.find("<polygon class=\"band\"").unwrap();
        assert!(band < svg.find("<polyline").unwrap());
        let points = svg[band..].split("points=\"").nth(1).unwrap();
        assert_eq!(points.split('"').next().unwrap().split(' ').count(), 6);
        assert!(svg.contains(">60</text>"), "{svg}");
        assert!(svg.contains("<title id=\"p1-title\">dev &lt;all&gt;</title>"));
        assert_eq!(svg.matches("class=\"axis-label\"").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
