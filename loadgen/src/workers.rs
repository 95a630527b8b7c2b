//! Worker processes: `--processes N` re-executes this binary as N workers driven over
//! stdin/stdout; the parent sees them and its own threads through one `Backend`.

use crate::*;

/// Worker side: run the executors, relay status on stdout, obey "go T" / "wend" / "end".
pub(crate) fn worker_main(cli: Cli) -> i32 {
    let tag = cli.g.run_tag.clone().unwrap_or_else(|| "w".into());
    let t0 = if cli.g.worker_t0 != 0 {
        cli.g.worker_t0
    } else {
        now_ns()
    };
    let run = match LocalRun::start(&cli, t0, &tag) {
        Ok(r) => Arc::new(Mutex::new(Some(r))),
        Err(e) => {
            println!("fatal {e}");
            return 1;
        }
    };
    let r2 = run.clone();
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended2 = ended.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let mut g = r2.lock().unwrap();
            let Some(r) = g.as_mut() else { break };
            let mut it = line.split_whitespace();
            match it.next() {
                Some("go") => {
                    let t = it
                        .next()
                        .and_then(|x| x.parse().ok())
                        .unwrap_or_else(now_ns);
                    r.go(t);
                }
                Some("wend") => r.window_end(),
                Some("end") => {
                    r.end();
                    ended2.store(true, Relaxed);
                    break;
                }
                _ => {}
            }
        }
        // Parent gone or said end.
        if let Some(r) = r2.lock().unwrap().as_ref() {
            r.end();
        }
        ended2.store(true, Relaxed);
    });
    let mut out = std::io::stdout();
    let mut sent_error = false;
    while !ended.load(Relaxed) {
        {
            let g = run.lock().unwrap();
            let r = g.as_ref().unwrap();
            let st = r.status();
            if !sent_error {
                if let Some(e) = r.first_error() {
                    let _ = writeln!(out, "error {}", e.replace('\n', " "));
                    sent_error = true;
                }
            }
            let _ = writeln!(
                out,
                "status {}",
                serde_json::to_string(&st).unwrap_or_default()
            );
            let _ = out.flush();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = run.lock().unwrap().take().unwrap();
    let res = r.collect();
    let _ = writeln!(
        out,
        "result {}",
        serde_json::to_string(&res).unwrap_or_default()
    );
    let _ = out.flush();
    0
}

#[derive(Default)]
pub(crate) struct WorkerState {
    pub(crate) status: Status,
    pub(crate) error: Option<String>,
    pub(crate) fatal: Option<String>,
    pub(crate) result: Option<ProcResult>,
    pub(crate) exited: bool,
}

pub(crate) struct Worker {
    pub(crate) child: Child,
    pub(crate) stdin: ChildStdin,
    pub(crate) state: Arc<Mutex<WorkerState>>,
    pub(crate) reader: Option<JoinHandle<()>>,
}

pub(crate) enum Backend {
    Local(Box<LocalRun>),
    Procs(Vec<Worker>),
}

impl Backend {
    pub(crate) fn start(cli: &Cli, t0: u64, tag: &str) -> Result<Backend, String> {
        if cli.g.processes <= 1 {
            return Ok(Backend::Local(Box::new(LocalRun::start(cli, t0, tag)?)));
        }
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut workers = Vec::new();
        for i in 0..cli.g.processes {
            let mut child = Command::new(&exe)
                .arg("--worker-index")
                .arg(i.to_string())
                .arg("--worker-count")
                .arg(cli.g.processes.to_string())
                .arg("--run-tag")
                .arg(tag)
                .arg("--worker-t0")
                .arg(t0.to_string())
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("spawn worker: {e}"))?;
            let stdin = child.stdin.take().unwrap();
            let stdout = child.stdout.take().unwrap();
            let state = Arc::new(Mutex::new(WorkerState::default()));
            let st2 = state.clone();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let (kind, rest) = line.split_once(' ').unwrap_or((&line, ""));
                    let mut s = st2.lock().unwrap();
                    match kind {
                        "status" => {
                            if let Ok(v) = serde_json::from_str(rest) {
                                s.status = v;
                            }
                        }
                        "error" => s.error = Some(rest.to_string()),
                        "fatal" => s.fatal = Some(rest.to_string()),
                        "result" => match serde_json::from_str(rest) {
                            Ok(r) => s.result = Some(r),
                            Err(e) => s.fatal = Some(format!("bad worker result: {e}")),
                        },
                        _ => {}
                    }
                }
                st2.lock().unwrap().exited = true;
            });
            workers.push(Worker {
                child,
                stdin,
                state,
                reader: Some(reader),
            });
        }
        Ok(Backend::Procs(workers))
    }

    pub(crate) fn status(&self) -> Result<Status, String> {
        match self {
            Backend::Local(l) => Ok(l.status()),
            Backend::Procs(ws) => {
                let mut s = Status {
                    ready: true,
                    ..Default::default()
                };
                for w in ws {
                    let st = w.state.lock().unwrap();
                    if let Some(f) = &st.fatal {
                        return Err(f.clone());
                    }
                    if st.exited && st.result.is_none() {
                        return Err("a worker process exited early".into());
                    }
                    s.ready &= st.status.ready;
                    s.add(&st.status);
                }
                Ok(s)
            }
        }
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        match self {
            Backend::Local(l) => l.first_error(),
            Backend::Procs(ws) => ws
                .iter()
                .find_map(|w| w.state.lock().unwrap().error.clone()),
        }
    }

    pub(crate) fn send(&mut self, line: &str) {
        if let Backend::Procs(ws) = self {
            for w in ws {
                let _ = writeln!(w.stdin, "{line}");
                let _ = w.stdin.flush();
            }
        }
    }

    pub(crate) fn go(&mut self, t: u64) {
        match self {
            Backend::Local(l) => l.go(t),
            Backend::Procs(_) => self.send(&format!("go {t}")),
        }
    }

    pub(crate) fn window_end(&mut self) {
        match self {
            Backend::Local(l) => l.window_end(),
            Backend::Procs(_) => self.send("wend"),
        }
    }

    pub(crate) fn end(&mut self) {
        match self {
            Backend::Local(l) => l.end(),
            Backend::Procs(_) => self.send("end"),
        }
    }

    pub(crate) fn collect(self) -> Result<Vec<ProcResult>, String> {
        match self {
            Backend::Local(l) => Ok(vec![l.collect()]),
            Backend::Procs(ws) => {
                let mut out = Vec::new();
                for mut w in ws {
                    if let Some(r) = w.reader.take() {
                        let _ = r.join();
                    }
                    let _ = w.child.wait();
                    let mut st = w.state.lock().unwrap();
                    match st.result.take() {
                        Some(r) => out.push(r),
                        None => {
                            return Err(st
                                .fatal
                                .clone()
                                .unwrap_or_else(|| "a worker produced no result".into()))
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}
