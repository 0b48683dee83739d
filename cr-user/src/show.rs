//! `fastcr show`: decode an image dir for people (a summary) or tools (JSON).

use std::fmt::Write;
use std::path::Path;

use serde_json::json;

use crate::image::inventory::Inventory;
use crate::image::mm::VmaKind;
use crate::image::pagemap::PagemapImage;
use crate::image::{ImageDir, Kind};
use crate::restore::{LoadedImage, RestoreError, load};

/// A pre-dump image holds an inventory and pages only.
fn pre_dump(path: &Path) -> Result<Option<(Inventory, PagemapImage)>, RestoreError> {
    let dir = ImageDir::open(path)?;
    let inventory: Inventory = dir.read(Kind::Inventory, 0)?;
    if !inventory.pre_dump {
        return Ok(None);
    }
    let pagemap: PagemapImage = dir.read(Kind::Pagemap, inventory.root_pid)?;
    Ok(Some((inventory, pagemap)))
}

/// Decodes the image dir at `path` as JSON (raw xstate bytes are summarised by length).
pub fn to_json(path: &Path) -> Result<serde_json::Value, RestoreError> {
    if let Some((inventory, pagemap)) = pre_dump(path)? {
        return Ok(json!({ "inventory": inventory, "pagemap": pagemap }));
    }
    let img = load(path)?;
    let procs: Vec<serde_json::Value> = img
        .procs
        .iter()
        .map(|p| {
            let mut core = serde_json::to_value(&p.core).unwrap_or_default();
            if let Some(obj) = core.as_object_mut() {
                obj.insert("xstate".into(), json!({ "bytes": p.core.xstate.len() }));
            }
            let threads: Vec<serde_json::Value> = p
                .threads
                .threads
                .iter()
                .map(|t| json!({ "tid": t.tid, "comm": t.comm, "rip": t.regs.rip, "sigmask": t.sigmask }))
                .collect();
            json!({
                "pid": p.pid,
                "core": core,
                "threads": threads,
                "sigstate": p.sigstate,
                "stopped_by": p.stopped,
                "mm": p.mm,
                "files": p.files,
                "locks": p.locks,
                "pagemap": p.pagemap,
                "pages_file": p.pages_path,
                "pages": {
                    "total": p.pagemap.total_pages(),
                    "stored": p.pagemap.stored_pages(),
                    "cow_parent": p.pagemap.cow_pages(),
                },
            })
        })
        .collect();
    let r = img.root();
    let mut core = serde_json::to_value(&r.core).unwrap_or_default();
    if let Some(obj) = core.as_object_mut() {
        obj.insert("xstate".into(), json!({ "bytes": r.core.xstate.len() }));
    }
    Ok(json!({
        "inventory": img.inventory,
        "tree": img.tree,
        "core": core,
        "mm": r.mm,
        "files": r.files,
        "pagemap": r.pagemap,
        "pages_file": r.pages_path,
        "processes": procs,
        "objects": img.objects,
    }))
}

/// A human summary of the image dir at `path`.
pub fn summary(path: &Path) -> Result<String, RestoreError> {
    if let Some((inv, pagemap)) = pre_dump(path)? {
        return Ok(format!(
            "pre-dump by fastcr {} of pid {}: {} pages stored, {} in the parent chain{}; tracking fd {}\n",
            inv.tool_version,
            inv.root_pid,
            pagemap.stored_pages(),
            pagemap.total_pages() - pagemap.stored_pages(),
            inv.parent.map(|p| format!(" ({p})")).unwrap_or_default(),
            inv.tracking.map_or(-1, |t| t.fd),
        ));
    }
    Ok(render(&load(path)?))
}

fn render(full: &LoadedImage) -> String {
    let mut s = String::new();
    let inv = &full.inventory;
    if full.tree.procs.len() > 1 {
        let _ = writeln!(s, "process tree:");
        for p in &full.tree.procs {
            let pages = full
                .procs
                .iter()
                .find(|i| i.pid == p.pid)
                .map_or(String::new(), |i| {
                    format!(
                        ", {} pages stored, {} shared copy-on-write with its parent",
                        i.pagemap.stored_pages(),
                        i.pagemap.cow_pages()
                    )
                });
            let _ = writeln!(
                s,
                "  pid {} parent {} session {} group {}{}{pages}",
                p.pid,
                p.ppid,
                p.sid,
                p.pgid,
                p.zombie
                    .map_or(String::new(), |st| format!(" zombie (status {st:#x})"))
                    + &full
                        .procs
                        .iter()
                        .find(|i| i.pid == p.pid)
                        .and_then(|i| i.stopped)
                        .map_or(String::new(), |sig| format!(" stopped (signal {sig})"))
            );
        }
    }
    let img = full.root();
    let _ = writeln!(
        s,
        "image by fastcr {} of pid {} ({}){}",
        inv.tool_version,
        inv.root_pid,
        img.core.comm,
        if inv.shell_job { ", shell job" } else { "" }
    );
    if let Some(sig) = img.stopped {
        let _ = writeln!(s, "stopped by job control (signal {sig}); restored stopped");
    }
    let _ = writeln!(
        s,
        "exe {}  cwd {}  umask {:03o}",
        img.mm.exe, img.files.cwd, img.files.umask
    );
    let _ = writeln!(
        s,
        "rip {:#x}  rsp {:#x}  sigmask {:#x}  {} signal handlers  xstate {} bytes",
        img.core.regs.rip,
        img.core.regs.rsp,
        img.core.sigmask,
        img.core.sigactions.len(),
        img.core.xstate.len()
    );
    if let Some(sig) = &img.sigstate {
        let _ = writeln!(
            s,
            "{} signals pending for the process, {} for single threads  {} POSIX timers  \
             personality {:#x}{}",
            sig.shared_pending.len(),
            sig.thread_pending
                .iter()
                .map(|t| t.signals.len())
                .sum::<usize>(),
            sig.timers.len(),
            sig.personality,
            if sig.no_new_privs {
                "  no_new_privs"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(s, "{} VMAs:", img.mm.vmas.len());
    for v in &img.mm.vmas {
        let pages: u64 = img
            .pagemap
            .entries
            .iter()
            .filter(|e| e.vaddr >= v.start && e.vaddr < v.end)
            .map(|e| u64::from(e.nr_pages))
            .sum();
        let kind = match &v.kind {
            VmaKind::Anon => "anon",
            VmaKind::File { .. } => "file",
            VmaKind::Vdso => "vdso",
            VmaKind::Vvar { .. } => "vvar",
            VmaKind::Object { .. } => "object",
        };
        let _ = writeln!(
            s,
            "  {:#014x}-{:#014x} prot {} {} {:<4} {:>8} pages dumped  {}",
            v.start,
            v.end,
            v.prot,
            if v.shared { "shared " } else { "private" },
            kind,
            pages,
            v.name
        );
    }
    let _ = writeln!(s, "{} fds:", img.files.fds.len());
    for f in &img.files.fds {
        let kind = match &f.kind {
            crate::image::files::FdKind::Socket(so) => socket_summary(so),
            k => fd_summary(k),
        };
        let _ = writeln!(s, "  {:>3} flags {:#o} pos {} {kind}", f.fd, f.flags, f.pos);
    }
    let _ = writeln!(
        s,
        "{} pages in {} runs: {} stored, {} shared copy-on-write with the parent process",
        img.pagemap.total_pages(),
        img.pagemap.entries.len(),
        img.pagemap.stored_pages(),
        img.pagemap.cow_pages()
    );
    s
}

/// One line for an fd that is not a socket; a FIFO's data in flight as its length only.
fn fd_summary(k: &crate::image::files::FdKind) -> String {
    use crate::image::files::FdKind;
    match k {
        FdKind::Fifo {
            path,
            dev,
            ino,
            contents,
        } => {
            let data = contents.as_ref().map_or_else(
                || "data saved on another fd".to_string(),
                |p| format!("size {}, {} bytes in flight", p.size, p.data.len()),
            );
            format!("Fifo {{ path: {path:?}, dev: {dev}, ino: {ino}, {data} }}")
        }
        FdKind::SharedFile { id, file } => {
            format!("SharedFile {{ id: {id}, file: {} }}", fd_summary(file))
        }
        k => format!("{k:?}"),
    }
}

/// One line for a socket: family, type, name, state, shutdown bits, queue size (not its bytes).
fn socket_summary(so: &crate::image::files::Socket) -> String {
    use crate::image::files::SocketState;
    let family = match so.family {
        libc::AF_UNIX => "unix",
        libc::AF_INET => "inet",
        libc::AF_INET6 => "inet6",
        _ => "family?",
    };
    let ty = match so.sotype {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "dgram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "type?",
    };
    let state = match &so.state {
        SocketState::Unconnected => "unconnected".to_string(),
        SocketState::Listening { backlog } => format!("listening (backlog {backlog})"),
        SocketState::Connected { peer } => format!("connected to socket {peer}"),
        SocketState::ConnectedTo { peer } => {
            format!("connected to {}", crate::files::addr_string(peer))
        }
        SocketState::Established(c) => format!(
            "established to {} (send queue {} bytes, receive queue {} bytes)",
            crate::files::addr_string(&c.peer),
            c.sndq.len(),
            c.rcvq.len()
        ),
    };
    let bytes: usize = so.queue.iter().map(Vec::len).sum();
    format!(
        "socket {} {family} {ty} {} {state} shutdown {} queue {} messages {bytes} bytes",
        so.inode,
        crate::files::addr_string(&so.name),
        so.shutdown,
        so.queue.len()
    )
}
