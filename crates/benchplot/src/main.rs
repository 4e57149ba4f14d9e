//! `bench-plot RESULTS.tsv OUT.svg`: the throughput cells of `bench/throughput.sh` as a grouped
//! bar chart, one group per MTU and direction, one bar per peer, each bar the median of the
//! rounds. The input has one sample per line: `peer<TAB>mtu<TAB>metric<TAB>value`; metrics
//! other than throughput (RR, CRR) are ignored here, and loopback (no MTU) is left out.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use plotters::prelude::*;

/// The throughput metrics, in chart order, with their labels.
const METRICS: [(&str, &str); 2] = [("g2h", "guest→host"), ("h2g", "host→guest")];

/// One colour per peer, in order of first appearance (the kernel's own path first).
const COLOURS: [RGBColor; 8] = [
    RGBColor(120, 120, 120),
    RGBColor(228, 120, 50),
    RGBColor(90, 160, 90),
    RGBColor(30, 100, 200),
    RGBColor(160, 60, 160),
    RGBColor(200, 60, 60),
    RGBColor(40, 170, 170),
    RGBColor(150, 130, 40),
];

/// Median throughput per (group, peer), with peers and groups in first-seen order.
#[derive(Debug, Default)]
struct Chart {
    peers: Vec<String>,
    /// `(mtu, metric index)`.
    groups: Vec<(u32, usize)>,
    values: BTreeMap<(usize, usize), f64>,
}

fn index_of<T: PartialEq>(list: &mut Vec<T>, item: T) -> usize {
    match list.iter().position(|x| *x == item) {
        Some(i) => i,
        None => {
            list.push(item);
            list.len() - 1
        }
    }
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[(samples.len() - 1) / 2]
}

fn parse(text: &str) -> anyhow::Result<Chart> {
    let mut chart = Chart::default();
    let mut samples: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [peer, mtu, metric, value] = fields[..] else {
            bail!(
                "line {}: expected 4 tab-separated fields, got {line:?}",
                n + 1
            );
        };
        let Some(metric) = METRICS.iter().position(|(m, _)| *m == metric) else {
            continue;
        };
        let Ok(mtu) = mtu.parse::<u32>() else {
            continue; // loopback
        };
        let value: f64 = value
            .parse()
            .with_context(|| format!("line {}: bad value {value:?}", n + 1))?;
        let peer = index_of(&mut chart.peers, peer.to_string());
        let group = index_of(&mut chart.groups, (mtu, metric));
        samples.entry((group, peer)).or_default().push(value);
    }
    // Groups by MTU, then direction.
    let mut order: Vec<usize> = (0..chart.groups.len()).collect();
    order.sort_by_key(|&g| chart.groups[g]);
    let groups: Vec<(u32, usize)> = order.iter().map(|&g| chart.groups[g]).collect();
    for ((group, peer), mut v) in samples {
        let sorted_group = order.iter().position(|&g| g == group).unwrap_or(group);
        chart.values.insert((sorted_group, peer), median(&mut v));
    }
    chart.groups = groups;
    if chart.values.is_empty() {
        bail!("no throughput samples (g2h/h2g) in the input");
    }
    Ok(chart)
}

fn draw(chart: &Chart, out: &str, title: &str) -> anyhow::Result<()> {
    let width = 160 + 150 * chart.groups.len() as u32;
    let root = SVGBackend::new(out, (width.max(640), 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = chart.values.values().copied().fold(0.0, f64::max) * 1.1;
    let groups = chart.groups.len() as f64;
    let mut ctx = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5..groups - 0.5, 0.0..top.max(0.1))?;
    let labels: Vec<String> = chart
        .groups
        .iter()
        .map(|(mtu, m)| format!("MTU {mtu} {}", METRICS[*m].1))
        .collect();
    ctx.configure_mesh()
        .disable_x_mesh()
        .x_labels(chart.groups.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("Gbit/s (median)")
        .draw()?;
    let bar = 0.8 / chart.peers.len() as f64;
    for (p, peer) in chart.peers.iter().enumerate() {
        let colour = COLOURS[p % COLOURS.len()];
        let bars = chart
            .values
            .iter()
            .filter(|((_, vp), _)| *vp == p)
            .map(|((g, _), v)| {
                let x0 = *g as f64 - 0.4 + bar * p as f64;
                Rectangle::new([(x0, 0.0), (x0 + bar * 0.9, *v)], colour.filled())
            });
        ctx.draw_series(bars)?
            .label(peer.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, rest @ ..] = &args[..] else {
        bail!("usage: bench-plot RESULTS.tsv OUT.svg [TITLE]");
    };
    let title = rest
        .first()
        .map_or("TCP throughput, one stream (iperf3)", String::as_str);
    let text = std::fs::read_to_string(input).with_context(|| format!("cannot read {input}"))?;
    let chart = parse(&text)?;
    draw(&chart, output, title).with_context(|| format!("cannot draw {output}"))?;
    println!(
        "{output}: {} peers, {} groups",
        chart.peers.len(),
        chart.groups.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_per_cell_in_mtu_then_direction_order() {
        let chart = parse(
            "veth\t65520\tg2h\t13\nveth\t1500\th2g\t10\nlimanet\t1500\th2g\t2\n\
             limanet\t1500\th2g\t4\nlimanet\t1500\th2g\t3\nloopback\tlo\tg2h\t14\n\
             limanet\t1500\trr_p50\t60\n",
        )
        .unwrap();
        assert_eq!(chart.peers, ["veth", "limanet"]);
        assert_eq!(chart.groups, [(1500, 1), (65520, 0)]);
        assert_eq!(chart.values[&(0, 1)], 3.0);
        assert_eq!(chart.values[&(1, 0)], 13.0);
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        assert!(parse("veth\t1500\tg2h\n").is_err());
        assert!(parse("veth\t1500\tg2h\tfast\n").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn renders_an_svg() {
        let chart = parse("veth\t1500\tg2h\t10\nlimanet\t1500\tg2h\t5\n").unwrap();
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("t.svg");
        draw(&chart, out.to_str().unwrap(), "t").unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.contains("<svg") && svg.contains("limanet") && svg.contains("MTU 1500"));
    }
}
