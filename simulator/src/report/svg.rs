//! A minimal SVG plot writer for the report: axes with round ticks,
//! lines, bars and labels, as inline `<svg>` text (no scripts, no external
//! references, so the page stays self-contained).
//!
//! Every text that reaches the markup goes through [`esc`].

use std::fmt::Write as _;

/// Escapes text for HTML and SVG content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Round tick values from 0 to at least `max` (about five of them).
pub fn ticks(max: f64) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    // At most a dozen: the loop is bounded whatever `max` is.
    (0..=12)
        .map(|i| f64::from(i) * step)
        .take_while(|v| *v < max + step * 0.999)
        .collect()
}

/// Formats a tick label without trailing noise (`2.5`, `10`, `0.05`).
pub fn tick_label(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One chart being written.
pub struct Plot {
    out: String,
    x_max: f64,
    y_max: f64,
}

const W: f64 = 640.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;

/// Series colours, readable on white and in grey print.
pub const COLOURS: [&str; 5] = ["#1f6fb4", "#e07b1a", "#2e9d4b", "#b8322f", "#7d5ab5"];

impl Plot {
    /// Opens a chart titled `title`. A numeric axis gets round ticks up to
    /// its max; `None` leaves the axis to the caller (categories), with
    /// the scale running 0..1.
    pub fn new(title: &str, x: Option<(f64, &str)>, y: Option<(f64, &str)>, aria: &str) -> Self {
        let top_tick = |a: Option<(f64, &str)>| {
            a.map_or(1.0, |(m, _)| ticks(m).last().copied().unwrap_or(1.0))
        };
        let mut p = Self {
            out: String::new(),
            x_max: top_tick(x),
            y_max: top_tick(y),
        };
        let _ = write!(
            p.out,
            r#"<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}"><title>{}</title>"#,
            esc(aria),
            esc(title)
        );
        let _ = write!(
            p.out,
            r#"<text x="{LEFT}" y="18" class="t">{}</text>"#,
            esc(title)
        );
        let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
        let _ = write!(
            p.out,
            r##"<path d="M{x0},{y1}V{y0}H{x1}" fill="none" stroke="#444"/>"##
        );
        if let Some((m, label)) = x {
            for t in ticks(m) {
                let px = p.x(t);
                let _ = write!(
                    p.out,
                    r##"<line x1="{px:.1}" y1="{y0}" x2="{px:.1}" y2="{}" stroke="#444"/><text x="{px:.1}" y="{}" class="c">{}</text>"##,
                    y0 + 4.0,
                    y0 + 16.0,
                    tick_label(t)
                );
            }
            let _ = write!(
                p.out,
                r#"<text x="{}" y="{}" class="c">{}</text>"#,
                (x0 + x1) / 2.0,
                H - 8.0,
                esc(label)
            );
        }
        if let Some((m, label)) = y {
            for t in ticks(m) {
                let py = p.y(t);
                let _ = write!(
                    p.out,
                    r##"<line x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" class="r">{}</text>"##,
                    x0 - 6.0,
                    py + 4.0,
                    tick_label(t)
                );
            }
            let _ = write!(
                p.out,
                r#"<text x="14" y="{}" class="c" transform="rotate(-90 14 {})">{}</text>"#,
                (y0 + y1) / 2.0,
                (y0 + y1) / 2.0,
                esc(label)
            );
        }
        p
    }

    /// Pixel x of a data value.
    pub fn x(&self, v: f64) -> f64 {
        LEFT + (W - LEFT - RIGHT) * (v / self.x_max).clamp(0.0, 1.0)
    }

    /// Pixel y of a data value.
    pub fn y(&self, v: f64) -> f64 {
        (H - BOTTOM) - (H - TOP - BOTTOM) * (v / self.y_max).clamp(0.0, 1.0)
    }

    /// A step line through `points` (data coordinates), as a CDF is drawn.
    pub fn steps(&mut self, points: &[(f64, f64)], colour: &str, dashed: bool) {
        let Some(first) = points.first() else {
            return;
        };
        let mut d = format!("M{:.1},{:.1}", self.x(first.0), self.y(0.0));
        let mut last_y = 0.0;
        for (x, y) in points {
            let _ = write!(
                d,
                "L{:.1},{:.1}L{:.1},{:.1}",
                self.x(*x),
                self.y(last_y),
                self.x(*x),
                self.y(*y)
            );
            last_y = *y;
        }
        let dash = if dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            self.out,
            r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#
        );
    }

    /// A rectangle between two data corners, with a hover title.
    pub fn bar(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, colour: &str, title: &str) {
        let (ax, bx) = (self.x(x0), self.x(x1));
        let (ay, by) = (self.y(y0), self.y(y1));
        let _ = write!(
            self.out,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}</title></rect>"#,
            ax.min(bx),
            ay.min(by),
            (bx - ax).abs().max(1.0),
            (by - ay).abs().max(1.0),
            esc(title)
        );
    }

    /// A horizontal reference line at data `y` (name it in a legend).
    pub fn hline(&mut self, y: f64, colour: &str) {
        let py = self.y(y);
        let _ = write!(
            self.out,
            r#"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="{colour}" stroke-width="2" stroke-dasharray="6 3"/>"#,
            W - RIGHT,
        );
    }

    /// A vertical reference line at data `x`, labelled at the top.
    pub fn vline(&mut self, x: f64, colour: &str, label: &str) {
        let px = self.x(x);
        let _ = write!(
            self.out,
            r#"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="{colour}">{}</text>"#,
            H - BOTTOM,
            px + 3.0,
            TOP + 10.0,
            esc(label)
        );
    }

    /// Text at pixel coordinates; `class` is `c` (centred), `r` (right)
    /// or empty (left).
    pub fn text(&mut self, px: f64, py: f64, class: &str, text: &str) {
        let _ = write!(
            self.out,
            r#"<text x="{px:.1}" y="{py:.1}" class="{class}">{}</text>"#,
            esc(text)
        );
    }

    /// A legend entry in the title row, right-aligned in slots of 185
    /// px (entry 0 rightmost), above the plot so it hides no data.
    pub fn legend(&mut self, slot: usize, colour: &str, text: &str) {
        let py = 9.0;
        let px = W - RIGHT - 185.0 * (slot as f64 + 1.0);
        let _ = write!(
            self.out,
            r#"<rect x="{px}" y="{py}" width="10" height="10" fill="{colour}"/>"#
        );
        self.text(px + 14.0, py + 9.0, "", text);
    }

    /// Pixel bounds of the plot area: left, right, top, bottom.
    pub fn area(&self) -> (f64, f64, f64, f64) {
        (LEFT, W - RIGHT, TOP, H - BOTTOM)
    }

    /// Closes the chart.
    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(ticks(10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.0), ticks(1.0));
        assert!(ticks(f64::NAN).len() > 1);
        let t = ticks(123.0);
        assert!(*t.last().unwrap() >= 123.0 && t.len() <= 13, "{t:?}");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(40.0), "40");
    }

    #[test]
    fn markup_characters_in_text_are_escaped() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
