//! `ember bench` outputs: the table on stdout, results.json (schema `ember-bench/1`, see
//! docs/startup-latency.md), results.csv and plot.svg.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::runner::Sample;
use super::stats::Summary;

/// One subject's results.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectResult {
    /// Name.
    pub name: String,
    /// Why it was skipped, if it was.
    pub skipped: Option<String>,
    /// How it was configured, where that was a choice (a peer's fast-boot settings).
    pub configuration: Option<String>,
    /// The command it ran (`{run}` stands for the run number).
    pub command: Vec<String>,
    /// Exec to workload.
    pub to_workload: Option<Summary>,
    /// Exec to the first byte on stdout (ember's and the KVM floor's: the guest's first
    /// output, the nearest to its first instruction a process outside can see).
    pub first_output: Option<Summary>,
    /// Exec to the first KVM_RUN by the subject's own stamp (ember and the KVM floor only).
    pub first_kvm_run: Option<Summary>,
    /// Exec to exit.
    pub total: Option<Summary>,
    /// Exec to the end of the last process the run left behind (ember's teardown keeper: the
    /// VM destroyed); the same as `total` for a run that leaves none.
    pub gone: Option<Summary>,
    /// Host CPU time per run (user + system: the process, the descendants it waited for and
    /// those it left behind).
    pub cpu: Option<Summary>,
    /// This subject's median exec-to-exit over ember's.
    pub ratio_total_to_ember: Option<f64>,
    /// This subject's median time-to-workload over ember's.
    pub ratio_to_workload_to_ember: Option<f64>,
    /// ember only: median of each phase's delta, in phase order.
    pub phase_medians_ns: Vec<(String, f64)>,
    /// Every counted run.
    pub samples: Vec<SampleOut>,
}

/// One counted run, as written to JSON and CSV.
#[derive(Debug, Clone, Serialize)]
pub struct SampleOut {
    /// Exec to workload, if seen.
    pub to_workload_ns: Option<u64>,
    /// Exec to the first byte on stdout, if any.
    pub first_output_ns: Option<u64>,
    /// Exec to the first KVM_RUN, if the subject stamps it.
    pub first_kvm_run_ns: Option<u64>,
    /// Exec to exit.
    pub total_ns: u64,
    /// Exec to the end of what the run left behind.
    pub gone_ns: u64,
    /// CPU time.
    pub cpu_ns: u64,
}

impl From<&Sample> for SampleOut {
    fn from(s: &Sample) -> Self {
        SampleOut {
            to_workload_ns: s.to_workload_ns,
            first_output_ns: s.first_output_ns,
            first_kvm_run_ns: s.first_kvm_run_ns,
            total_ns: s.total_ns,
            gone_ns: s.gone_ns,
            cpu_ns: s.cpu_ns,
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    /// Schema id.
    pub schema: &'static str,
    /// Host flavour, CPU, kernel, cores.
    pub host: serde_json::Value,
    /// What ember booted and what the containers ran.
    pub guest: serde_json::Value,
    /// Counted runs per subject, dropped runs per block, counted runs per block.
    pub method: serde_json::Value,
    /// Per subject, ember first.
    pub subjects: Vec<SubjectResult>,
}

fn ms(ns: f64) -> f64 {
    ns / 1e6
}

impl BenchResults {
    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "host: {} /dev/kvm, {} ({} cores), Linux {}; guest: {} [{}]\n",
            self.host["flavour"].as_str().unwrap_or("?"),
            self.host["cpu"].as_str().unwrap_or("?"),
            self.host["cores"],
            self.host["kernel"].as_str().unwrap_or("?"),
            self.guest["description"].as_str().unwrap_or("?"),
            self.guest["kernel"].as_str().unwrap_or("?")
        ));
        out.push_str(&format!(
            "{:<12} {:>4} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>8} {:>8} | {:>8} {:>8}\n",
            "subject", "runs", "ttw med", "ttw p90", "ttw p99", "min", "median", "p90", "p99", "max", "mean", "x ember", "ttw x", "gone med", "cpu med"
        ));
        for s in &self.subjects {
            if let Some(reason) = &s.skipped {
                out.push_str(&format!("{:<12} skipped: {reason}\n", s.name));
                continue;
            }
            let (Some(t), tw) = (&s.total, &s.to_workload) else {
                continue;
            };
            let f = |v: Option<f64>| {
                v.map(|x| format!("{:.2}", ms(x)))
                    .unwrap_or_else(|| "-".into())
            };
            let r = |v: Option<f64>| v.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<12} {:>4} | {:>9} {:>9} {:>9} | {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} | {:>8} {:>8} | {:>8} {:>8}\n",
                s.name,
                t.n,
                f(tw.map(|w| w.median_ns)),
                f(tw.map(|w| w.p90_ns)),
                f(tw.map(|w| w.p99_ns)),
                ms(t.min_ns),
                ms(t.median_ns),
                ms(t.p90_ns),
                ms(t.p99_ns),
                ms(t.max_ns),
                ms(t.mean_ns),
                r(s.ratio_total_to_ember),
                r(s.ratio_to_workload_to_ember),
                f(s.gone.map(|g| g.median_ns)),
                f(s.cpu.map(|c| c.median_ns)),
            ));
        }
        out.push_str("times in ms; ttw = exec to workload started; min..mean = exec to exit; x ember = median over ember's; gone = exec to the end of what the run left behind (ember's teardown keeper: the VM destroyed); cpu = host CPU time per run (user + system, waited-for children and what the run left behind included)\n");
        if let Some(e) = self.subjects.iter().find(|s| s.name == "ember") {
            let phases: Vec<String> = e
                .phase_medians_ns
                .iter()
                .map(|(n, d)| format!("{n} +{:.2}", ms(*d)))
                .collect();
            out.push_str(&format!(
                "ember phases (median deltas, ms): {}\n",
                phases.join(", ")
            ));
        }
        if let Some(line) = self.over_the_floor() {
            out.push_str(&line);
        }
        if let Some(line) = self.restore_against_cold() {
            out.push_str(&line);
        }
        for s in &self.subjects {
            if let (None, Some(c)) = (&s.skipped, &s.configuration) {
                out.push_str(&format!("{} configuration: {c}\n", s.name));
            }
        }
        out
    }

    /// ember against the KVM floor, the goal's measure: exec to the first KVM_RUN (the first
    /// guest instruction) by each one's own stamp on the bench's clock, and exec to the
    /// guest's first output as the bench saw it on stdout.
    fn over_the_floor(&self) -> Option<String> {
        let subject = |name: &str| self.subjects.iter().find(|s| s.name == name);
        let (ember, floor) = (subject("ember")?, subject("kvm-floor")?);
        let line = |what: &str, e: Option<Summary>, f: Option<Summary>| {
            let (e, f) = (e?.median_ns, f?.median_ns);
            Some(format!(
                "exec to {what} (median, ms): ember {:.2}, KVM floor {:.2}: ember {:+.2} ms over KVM's own time\n",
                ms(e),
                ms(f),
                ms(e - f)
            ))
        };
        let runs = line(
            "the first KVM_RUN",
            ember.first_kvm_run,
            floor.first_kvm_run,
        );
        let output = line(
            "the guest's first output",
            ember.first_output,
            floor.first_output,
        );
        let both = runs.into_iter().chain(output).collect::<String>();
        (!both.is_empty()).then_some(both)
    }

    /// A restore against a cold boot of the same guest (`--restore`): exec to the first
    /// KVM_RUN (the first guest instruction) and to the workload, by ember's own stamps.
    fn restore_against_cold(&self) -> Option<String> {
        let subject = |name: &str| self.subjects.iter().find(|s| s.name == name);
        let (cold, restore) = (subject("ember")?, subject("ember restore")?);
        let line = |what: &str, c: Option<Summary>, r: Option<Summary>| {
            let (c, r) = (c?.median_ns, r?.median_ns);
            Some(format!(
                "exec to {what} (median, ms): restore {:.2}, cold boot {:.2}: restore {:+.2} ms, {:.2}x\n",
                ms(r),
                ms(c),
                ms(r - c),
                r / c
            ))
        };
        let text = line(
            "the first KVM_RUN",
            cold.first_kvm_run,
            restore.first_kvm_run,
        )
        .into_iter()
        .chain(line("the workload", cold.to_workload, restore.to_workload))
        .collect::<String>();
        (!text.is_empty()).then_some(text)
    }

    /// Writes results.json, results.csv and plot.svg into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        let mut csv = String::from(
            "subject,run,to_workload_ns,total_ns,gone_ns,cpu_ns,first_output_ns,first_kvm_run_ns\n",
        );
        for s in &self.subjects {
            for (i, x) in s.samples.iter().enumerate() {
                let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
                csv.push_str(&format!(
                    "{},{},{},{},{},{},{},{}\n",
                    s.name,
                    i + 1,
                    opt(x.to_workload_ns),
                    x.total_ns,
                    x.gone_ns,
                    x.cpu_ns,
                    opt(x.first_output_ns),
                    opt(x.first_kvm_run_ns)
                ));
            }
        }
        std::fs::write(dir.join("results.csv"), csv)?;
        self.plot(&dir.join("plot.svg"))
            .map_err(|e| std::io::Error::other(format!("plot: {e}")))
    }

    /// A CDF of time-to-workload per subject, and ember's median phases as a stacked bar.
    fn plot(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (960, 880)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(500);
        let series: Vec<(&str, Vec<f64>)> = self
            .subjects
            .iter()
            .filter(|s| s.skipped.is_none())
            .map(|s| {
                let mut v: Vec<f64> = s
                    .samples
                    .iter()
                    .filter_map(|x| x.to_workload_ns)
                    .map(|n| ms(n as f64))
                    .collect();
                v.sort_by(f64::total_cmp);
                (s.name.as_str(), v)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let lo = series
            .iter()
            .filter_map(|(_, v)| v.first())
            .cloned()
            .fold(f64::INFINITY, f64::min);
        let hi = series
            .iter()
            .filter_map(|(_, v)| v.last())
            .cloned()
            .fold(0.0, f64::max);
        if series.is_empty() || !lo.is_finite() {
            return Ok(());
        }
        let mut chart = ChartBuilder::on(&top)
            .caption(
                "Time from exec to workload started (CDF)",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(((lo * 0.8).max(0.01)..hi * 1.25).log_scale(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("milliseconds (log scale)")
            .y_desc("fraction of runs")
            .draw()?;
        for (i, (name, v)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let n = v.len() as f64;
            let points: Vec<(f64, f64)> = v
                .iter()
                .enumerate()
                .map(|(k, &x)| (x, (k + 1) as f64 / n))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()?;

        if let Some(e) = self
            .subjects
            .iter()
            .find(|s| s.name == "ember" && !s.phase_medians_ns.is_empty())
        {
            let total: f64 = e.phase_medians_ns.iter().map(|(_, d)| ms(*d)).sum();
            let mut bar = ChartBuilder::on(&bottom)
                .caption(
                    "ember: median time in each startup phase (stacked)",
                    ("sans-serif", 18),
                )
                .margin(15)
                .x_label_area_size(35)
                .build_cartesian_2d(0.0..total.max(0.001) * 1.02, 0.0..4.0)?;
            bar.configure_mesh()
                .x_desc("milliseconds since process start")
                .disable_y_mesh()
                .disable_y_axis()
                .draw()?;
            let mut at = 0.0;
            for (i, (name, d)) in e.phase_medians_ns.iter().enumerate() {
                let w = ms(*d);
                let color = Palette99::pick(i).to_rgba();
                bar.draw_series(std::iter::once(Rectangle::new(
                    [(at, 3.0), (at + w, 3.8)],
                    color.filled(),
                )))?
                .label(format!("{name} {w:.2} ms"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
                at += w;
            }
            bar.configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.9))
                .label_font(("sans-serif", 11))
                .draw()?;
        }
        root.present()?;
        Ok(())
    }
}
