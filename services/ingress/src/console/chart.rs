//! Server-rendered SVG charts (inline, no script, nothing loaded): calls and
//! errors per group as bars. Each chart is an image with a title and a
//! description for screen readers; the numbers themselves are in the table the
//! screen puts under it.

use maud::{Markup, html};

/// One bar: its label, calls and errors.
pub struct Bar<'a> {
    pub label: &'a str,
    pub calls: i64,
    pub errors: i64,
}

/// Bars drawn at most (the table under the chart has every row).
const BARS_MAX: usize = 50;
const WIDTH: i64 = 800;
const LABEL_WIDTH: i64 = 220;
const BAR_HEIGHT: i64 = 18;
const GAP: i64 = 6;
const CALLS_COLOUR: &str = "#1d4ed8";
const ERRORS_COLOUR: &str = "#b91c1c";

/// Horizontal bars (calls, with their errors over them), one per group.
pub fn bars(id: &str, title: &str, bars: &[Bar<'_>]) -> Markup {
    let shown = &bars[..bars.len().min(BARS_MAX)];
    let max = shown.iter().map(|b| b.calls).max().unwrap_or(0).max(1);
    let calls: i64 = bars.iter().map(|b| b.calls).sum();
    let errors: i64 = bars.iter().map(|b| b.errors).sum();
    let rows = i64::try_from(shown.len()).unwrap_or(0);
    let height = rows.saturating_mul(BAR_HEIGHT + GAP).saturating_add(GAP + 20);
    let span = WIDTH - LABEL_WIDTH - 60;
    let scale = |n: i64| n.clamp(0, max).saturating_mul(span).checked_div(max).unwrap_or(0);
    let more =
        (bars.len() > BARS_MAX).then(|| format!(" The chart shows the first {BARS_MAX} of {} rows.", bars.len()));
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" role="img" width="100%"
                viewBox=(format!("0 0 {WIDTH} {height}")) aria-labelledby=(format!("{id}-title"))
                aria-describedby=(format!("{id}-desc")) {
                title id=(format!("{id}-title")) { (title) }
                desc id=(format!("{id}-desc")) {
                    (bars.len()) " bars: " (calls) " calls and " (errors) " errors in all; the largest bar is "
                    (max) " calls. Blue: calls; red: errors." (more.unwrap_or_default())
                }
                @for (i, bar) in shown.iter().enumerate() {
                    @let y = i64::try_from(i).unwrap_or(0).saturating_mul(BAR_HEIGHT + GAP).saturating_add(GAP);
                    g {
                        text x=(LABEL_WIDTH - 8) y=(y.saturating_add(BAR_HEIGHT - 4)) text-anchor="end" font-size="13" fill="#1b1b1f" {
                            (shorten(bar.label))
                        }
                        rect x=(LABEL_WIDTH) y=(y) width=(scale(bar.calls).max(1)) height=(BAR_HEIGHT) fill=(CALLS_COLOUR) {}
                        @if bar.errors > 0 {
                            rect x=(LABEL_WIDTH) y=(y) width=(scale(bar.errors).max(1)) height=(BAR_HEIGHT) fill=(ERRORS_COLOUR) {}
                        }
                        text x=(LABEL_WIDTH.saturating_add(scale(bar.calls)).saturating_add(6)) y=(y.saturating_add(BAR_HEIGHT - 4)) font-size="13" fill="#1b1b1f" {
                            (bar.calls)
                        }
                    }
                }
            }
            figcaption { (title) " (the table below has the numbers)" }
        }
    }
}

/// A label cut to fit beside its bar.
fn shorten(label: &str) -> String {
    const MAX: usize = 30;
    if label.chars().count() <= MAX {
        label.to_string()
    } else {
        let cut: String = label.chars().take(MAX - 1).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_describe_the_totals() {
        let svg = bars(
            "c",
            "Calls by tool",
            &[
                Bar {
                    label: "a",
                    calls: 10,
                    errors: 5,
                },
                Bar {
                    label: "b",
                    calls: 5,
                    errors: 0,
                },
            ],
        )
        .into_string();
        assert!(svg.contains("<title id=\"c-title\">Calls by tool</title>"), "{svg}");
        assert!(svg.contains("2 bars: 15 calls and 5 errors in all"), "{svg}");
        let span = WIDTH - LABEL_WIDTH - 60;
        assert!(
            svg.contains(&format!("width=\"{span}\"")),
            "the largest spans the chart"
        );
        assert!(
            svg.contains(&format!("width=\"{}\"", span / 2)),
            "half as many: half as long"
        );
    }
}
