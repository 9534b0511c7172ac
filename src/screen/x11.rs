//! The X11 screen, spoken to directly with x11rb over one long-lived connection.
//!
//! Why not xcap (the design card's first choice): xcap lists only RandR monitors that own an
//! output, so monitors made with `xrandr --setmonitor` (split ultrawides, the CI's second
//! monitor) are invisible to it; it opens four X connections per capture, rounds geometry
//! through the scale factor into logical integers, and copies pixels one at a time. Here one
//! connection is kept, monitors come from RandR 1.5 `GetMonitors`, and pixels arrive through
//! MIT-SHM shared memory when the server is local. README.md has the measured difference.

use std::time::{Duration, Instant};

use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::Event;
use x11rb::protocol::randr::ConnectionExt as _;
use x11rb::protocol::res::{ClientIdMask, ClientIdSpec, ConnectionExt as _};
use x11rb::protocol::shm::ConnectionExt as _;
use x11rb::protocol::xproto::{
    AtomEnum, ConnectionExt as _, CreateWindowAux, ImageFormat, ImageOrder, InputFocus, KeyButMask,
    QueryPointerReply, Window, WindowClass,
};
use x11rb::rust_connection::RustConnection;

use crate::input::Selection;

use super::{
    ActiveWindow, Frame, FrameTarget, MonitorInfo, PixelOrder, RawCapture, Screen, ScreenError,
    ScreenPoint,
};

fn protocol<E: std::fmt::Display>(e: E) -> ScreenError {
    ScreenError::Protocol(e.to_string())
}

struct Atoms {
    net_active_window: u32,
    net_wm_name: u32,
    net_wm_pid: u32,
    utf8_string: u32,
    clipboard: u32,
    incr: u32,
    /// The property on `selection_window` where selection owners put what they send.
    deskhand_selection: u32,
}

pub struct X11Screen {
    conn: RustConnection,
    root: Window,
    display: String,
    atoms: Atoms,
    order: PixelOrder,
    has_randr_monitors: bool,
    has_res: bool,
    /// Shared memory for captures, created on first use and grown as needed; None when the
    /// server cannot use it (a remote display), and captures then travel over the socket.
    shm: Option<ShmSegment>,
    shm_usable: bool,
    /// An unmapped window of our own, to receive selections (X sends them to a window).
    selection_window: Window,
}

/// How long a selection owner has to answer: a paste in a desktop program is immediate.
const SELECTION_TIMEOUT: Duration = Duration::from_millis(500);
/// The most text a selection may hold for the policy to judge it (larger transfers go in
/// INCR pieces, which are not read: such a paste counts as unreadable).
const SELECTION_MAX_BYTES: u32 = 256 * 1024;

impl X11Screen {
    /// Connect to `display` (an X display name like ":0"), or to $DISPLAY when None.
    pub fn connect(display: Option<&str>) -> Result<Self, ScreenError> {
        let shown = display
            .map(str::to_owned)
            .or_else(|| std::env::var("DISPLAY").ok())
            .unwrap_or_default();
        let (conn, screen_num) = x11rb::connect(display).map_err(|e| ScreenError::Connect {
            display: shown.clone(),
            reason: e.to_string(),
        })?;
        let setup = conn.setup();
        let screen = setup
            .roots
            .get(screen_num)
            .ok_or_else(|| ScreenError::Connect {
                display: shown.clone(),
                reason: format!("the server has no screen {screen_num}"),
            })?;
        let root = screen.root;
        let depth = screen.root_depth;
        let bits_per_pixel = setup
            .pixmap_formats
            .iter()
            .find(|f| f.depth == depth)
            .map(|f| f.bits_per_pixel)
            .unwrap_or(0);
        if !(depth == 24 || depth == 32) || bits_per_pixel != 32 {
            return Err(ScreenError::UnsupportedFormat {
                depth,
                bits_per_pixel,
            });
        }
        let order = if setup.image_byte_order == ImageOrder::LSB_FIRST {
            PixelOrder::Bgrx
        } else {
            PixelOrder::Xrgb
        };
        let atoms = Atoms {
            net_active_window: intern(&conn, "_NET_ACTIVE_WINDOW")?,
            net_wm_name: intern(&conn, "_NET_WM_NAME")?,
            net_wm_pid: intern(&conn, "_NET_WM_PID")?,
            utf8_string: intern(&conn, "UTF8_STRING")?,
            clipboard: intern(&conn, "CLIPBOARD")?,
            incr: intern(&conn, "INCR")?,
            deskhand_selection: intern(&conn, "DESKHAND_SELECTION")?,
        };
        let selection_window = conn.generate_id().map_err(protocol)?;
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            selection_window,
            root,
            -1,
            -1,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            x11rb::COPY_FROM_PARENT,
            &CreateWindowAux::new(),
        )
        .map_err(protocol)?
        .check()
        .map_err(protocol)?;
        // RandR 1.5 is where monitors (as opposed to outputs) live.
        let has_randr_monitors = match conn.randr_query_version(1, 5) {
            Ok(cookie) => cookie
                .reply()
                .map(|v| (v.major_version, v.minor_version) >= (1, 5))
                .unwrap_or(false),
            Err(_) => false,
        };
        let has_res = conn
            .extension_information(x11rb::protocol::res::X11_EXTENSION_NAME)
            .ok()
            .flatten()
            .is_some();
        let shm_usable = conn
            .extension_information(x11rb::protocol::shm::X11_EXTENSION_NAME)
            .ok()
            .flatten()
            .is_some();
        Ok(Self {
            conn,
            root,
            display: shown,
            atoms,
            order,
            has_randr_monitors,
            has_res,
            shm: None,
            shm_usable,
            selection_window,
        })
    }

    pub fn display_name(&self) -> &str {
        &self.display
    }

    /// The pointer's position and the state of the buttons and modifier locks.
    fn query_pointer(&self) -> Result<QueryPointerReply, ScreenError> {
        self.conn
            .query_pointer(self.root)
            .map_err(protocol)?
            .reply()
            .map_err(protocol)
    }

    /// Where the real pointer is, in physical screen pixels.
    pub fn pointer(&self) -> Result<ScreenPoint, ScreenError> {
        let reply = self.query_pointer()?;
        Ok(ScreenPoint::new(
            i32::from(reply.root_x),
            i32::from(reply.root_y),
        ))
    }

    /// Physical pixels per logical pixel, from the Xft.dpi resource the desktop sets (96 dpi
    /// is 1.0). X11 itself works in physical pixels, so this only informs logical conversions.
    fn scale_factor(&self) -> f64 {
        let Ok(cookie) = self.conn.get_property(
            false,
            self.root,
            AtomEnum::RESOURCE_MANAGER,
            AtomEnum::STRING,
            0,
            u32::MAX / 4,
        ) else {
            return 1.0;
        };
        let Ok(reply) = cookie.reply() else {
            return 1.0;
        };
        String::from_utf8_lossy(&reply.value)
            .lines()
            .find_map(|l| l.strip_prefix("Xft.dpi:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|dpi| *dpi > 0.0)
            .map_or(1.0, |dpi| dpi / 96.0)
    }

    fn root_geometry(&self) -> Result<(u32, u32), ScreenError> {
        let g = self
            .conn
            .get_geometry(self.root)
            .map_err(protocol)?
            .reply()
            .map_err(protocol)?;
        Ok((u32::from(g.width), u32::from(g.height)))
    }

    /// Read a rectangle of the root window as packed 4-byte pixels and hand them to `use_`.
    fn with_pixels<T>(
        &mut self,
        x: i32,
        y: i32,
        width: u32,
        height: u32,
        use_: impl FnOnce(RawCapture<'_>) -> Result<T, ScreenError>,
    ) -> Result<T, ScreenError> {
        let (x16, y16, w16, h16) = (
            i16::try_from(x).map_err(protocol)?,
            i16::try_from(y).map_err(protocol)?,
            u16::try_from(width).map_err(protocol)?,
            u16::try_from(height).map_err(protocol)?,
        );
        let bytes = width as usize * height as usize * 4;
        if self.shm_usable {
            match self.shm_get_image(x16, y16, w16, h16, bytes) {
                Ok(()) => {
                    if let Some(seg) = &self.shm {
                        let raw = RawCapture {
                            width,
                            height,
                            pixels: &seg.as_slice()[..bytes],
                            order: self.order,
                        };
                        return use_(raw);
                    }
                }
                Err(e) => {
                    // A remote server cannot see our memory; fall back for good.
                    tracing::debug!("MIT-SHM capture unavailable, using GetImage: {e}");
                    self.shm_usable = false;
                    self.shm = None;
                }
            }
        }
        let reply = self
            .conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                self.root,
                x16,
                y16,
                w16,
                h16,
                u32::MAX,
            )
            .map_err(protocol)?
            .reply()
            .map_err(protocol)?;
        if reply.data.len() < bytes {
            return Err(ScreenError::Protocol(format!(
                "GetImage returned {} bytes for a {width}x{height} area",
                reply.data.len()
            )));
        }
        use_(RawCapture {
            width,
            height,
            pixels: &reply.data[..bytes],
            order: self.order,
        })
    }

    fn shm_get_image(
        &mut self,
        x: i16,
        y: i16,
        w: u16,
        h: u16,
        bytes: usize,
    ) -> Result<(), ScreenError> {
        let needs_new = self.shm.as_ref().is_none_or(|s| s.len < bytes);
        if needs_new {
            // Size for the whole root window so switching monitors does not reallocate.
            let (rw, rh) = self.root_geometry()?;
            let len = bytes.max(rw as usize * rh as usize * 4);
            if let Some(old) = self.shm.take() {
                // The server keeps its own attachment until told; ours goes with `old`.
                let _ = self.conn.shm_detach(old.xid);
            }
            self.shm = Some(ShmSegment::new(&self.conn, len)?);
        }
        let Some(seg) = &self.shm else {
            return Err(ScreenError::Protocol("no shared memory segment".into()));
        };
        self.conn
            .shm_get_image(
                self.root,
                x,
                y,
                w,
                h,
                u32::MAX,
                ImageFormat::Z_PIXMAP.into(),
                seg.xid,
                0,
            )
            .map_err(protocol)?
            .reply()
            .map_err(protocol)?;
        Ok(())
    }

    fn text_property(&self, window: Window, property: u32, kind: u32) -> Option<String> {
        let reply = self
            .conn
            .get_property(false, window, property, kind, 0, 4096)
            .ok()?
            .reply()
            .ok()?;
        if reply.value.is_empty() {
            return None;
        }
        Some(if kind == self.atoms.utf8_string {
            String::from_utf8_lossy(&reply.value).into_owned()
        } else {
            // STRING is Latin-1: each byte is the code point.
            reply.value.iter().map(|&b| char::from(b)).collect()
        })
    }

    fn wm_class(&self, window: Window) -> Option<(String, String)> {
        let raw = self.text_property(window, AtomEnum::WM_CLASS.into(), AtomEnum::STRING.into())?;
        let mut parts = raw.split('\0');
        let instance = parts.next().unwrap_or_default().to_owned();
        let class = parts.next().unwrap_or_default().to_owned();
        Some((instance, class))
    }

    fn window_pid(&self, window: Window) -> Option<u32> {
        // The server's record of which local process opened the connection cannot be forged
        // by the window's contents; _NET_WM_PID is what the client says about itself.
        if self.has_res {
            let spec = ClientIdSpec {
                client: window,
                mask: ClientIdMask::LOCAL_CLIENT_PID,
            };
            if let Some(pid) = self
                .conn
                .res_query_client_ids(&[spec])
                .ok()
                .and_then(|c| c.reply().ok())
                .and_then(|r| r.ids.into_iter().find_map(|id| id.value.first().copied()))
            {
                return Some(pid);
            }
        }
        let reply = self
            .conn
            .get_property(
                false,
                window,
                self.atoms.net_wm_pid,
                AtomEnum::CARDINAL,
                0,
                1,
            )
            .ok()?
            .reply()
            .ok()?;
        reply.value32()?.next()
    }

    /// The window that has the focus, as a window manager would name it: prefer the EWMH
    /// active window, else the focus window, else the top-level under the pointer.
    fn focused_window(&self) -> Result<Option<Window>, ScreenError> {
        let active = self
            .conn
            .get_property(
                false,
                self.root,
                self.atoms.net_active_window,
                AtomEnum::WINDOW,
                0,
                1,
            )
            .map_err(protocol)?
            .reply()
            .map_err(protocol)?;
        if let Some(w) = active
            .value32()
            .and_then(|mut v| v.next())
            .filter(|&w| w != 0)
        {
            return Ok(Some(w));
        }
        let focus = self
            .conn
            .get_input_focus()
            .map_err(protocol)?
            .reply()
            .map_err(protocol)?
            .focus;
        if focus != u32::from(InputFocus::POINTER_ROOT)
            && focus != x11rb::NONE
            && focus != self.root
        {
            return Ok(Some(focus));
        }
        let pointer = self.query_pointer()?;
        Ok((pointer.child != x11rb::NONE).then_some(pointer.child))
    }

    /// The client window (the one with WM_CLASS) at or around `window`: itself, an ancestor,
    /// or, under a reparenting window manager's frame, a descendant.
    fn client_window(&self, window: Window) -> Result<Window, ScreenError> {
        let mut current = window;
        for _ in 0..32 {
            if self.wm_class(current).is_some() {
                return Ok(current);
            }
            let tree = self
                .conn
                .query_tree(current)
                .map_err(protocol)?
                .reply()
                .map_err(protocol)?;
            if tree.parent == self.root || tree.parent == x11rb::NONE {
                return Ok(self.find_client_below(current, 3).unwrap_or(current));
            }
            current = tree.parent;
        }
        Ok(window)
    }

    fn find_client_below(&self, window: Window, depth: u32) -> Option<Window> {
        if depth == 0 {
            return None;
        }
        let tree = self.conn.query_tree(window).ok()?.reply().ok()?;
        for &child in tree.children.iter().rev() {
            if self.wm_class(child).is_some() {
                return Some(child);
            }
            if let Some(found) = self.find_client_below(child, depth - 1) {
                return Some(found);
            }
        }
        None
    }
}

impl Screen for X11Screen {
    fn monitors(&self) -> Result<Vec<MonitorInfo>, ScreenError> {
        let scale_factor = self.scale_factor();
        if self.has_randr_monitors {
            let reply = self
                .conn
                .randr_get_monitors(self.root, true)
                .map_err(protocol)?
                .reply()
                .map_err(protocol)?;
            let mut monitors = Vec::with_capacity(reply.monitors.len());
            for (index, m) in reply.monitors.iter().enumerate() {
                let name = self
                    .conn
                    .get_atom_name(m.name)
                    .ok()
                    .and_then(|c| c.reply().ok())
                    .map(|r| String::from_utf8_lossy(&r.name).into_owned())
                    .unwrap_or_else(|| format!("monitor-{index}"));
                monitors.push(MonitorInfo {
                    index,
                    name,
                    x: i32::from(m.x),
                    y: i32::from(m.y),
                    width: u32::from(m.width),
                    height: u32::from(m.height),
                    scale_factor,
                    primary: m.primary,
                });
            }
            if !monitors.is_empty() {
                return Ok(monitors);
            }
        }
        // Without RandR 1.5 the whole root window is the one monitor.
        let (width, height) = self.root_geometry()?;
        Ok(vec![MonitorInfo {
            index: 0,
            name: "screen".into(),
            x: 0,
            y: 0,
            width,
            height,
            scale_factor,
            primary: true,
        }])
    }

    fn capture(
        &mut self,
        monitor: &MonitorInfo,
        target: FrameTarget,
    ) -> Result<Frame, ScreenError> {
        let started = Instant::now();
        let mut frame =
            self.with_pixels(monitor.x, monitor.y, monitor.width, monitor.height, |raw| {
                Ok(raw.into_frame(monitor, target)?)
            })?;
        super::hide_own_windows(&mut frame);
        tracing::trace!(
            monitor = %monitor.name,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "captured {}x{} into {}x{}",
            monitor.width,
            monitor.height,
            frame.map.frame_width,
            frame.map.frame_height
        );
        Ok(frame)
    }

    fn active_window(&self) -> Result<Option<ActiveWindow>, ScreenError> {
        let Some(focused) = self.focused_window()? else {
            return Ok(None);
        };
        let window = self.client_window(focused)?;
        Ok(Some(self.describe(window)))
    }

    fn selection_text(&self, selection: Selection) -> Result<Option<String>, ScreenError> {
        let selection = match selection {
            Selection::Clipboard => self.atoms.clipboard,
            Selection::Primary => AtomEnum::PRIMARY.into(),
        };
        let owner = self
            .conn
            .get_selection_owner(selection)
            .map_err(protocol)?
            .reply()
            .map_err(protocol)?
            .owner;
        if owner == x11rb::NONE {
            return Ok(Some(String::new()));
        }
        let property = self.atoms.deskhand_selection;
        self.conn
            .convert_selection(
                self.selection_window,
                selection,
                self.atoms.utf8_string,
                property,
                x11rb::CURRENT_TIME,
            )
            .map_err(protocol)?;
        self.conn.flush().map_err(protocol)?;
        let deadline = Instant::now() + SELECTION_TIMEOUT;
        loop {
            match self.conn.poll_for_event().map_err(protocol)? {
                Some(Event::SelectionNotify(e))
                    if e.requestor == self.selection_window && e.selection == selection =>
                {
                    if e.property == x11rb::NONE {
                        // The owner cannot give it as text.
                        return Ok(None);
                    }
                    let reply = self
                        .conn
                        .get_property(
                            true,
                            self.selection_window,
                            property,
                            AtomEnum::ANY,
                            0,
                            SELECTION_MAX_BYTES / 4,
                        )
                        .map_err(protocol)?
                        .reply()
                        .map_err(protocol)?;
                    if reply.type_ == self.atoms.incr || reply.bytes_after > 0 {
                        return Ok(None);
                    }
                    return Ok(Some(String::from_utf8_lossy(&reply.value).into_owned()));
                }
                Some(_) => {}
                None if Instant::now() >= deadline => return Ok(None),
                None => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    fn caps_lock(&self) -> Result<bool, ScreenError> {
        let mask = self.query_pointer()?.mask;
        Ok(u16::from(mask) & u16::from(KeyButMask::LOCK) != 0)
    }

    fn window_at(&self, point: ScreenPoint) -> Result<Option<ActiveWindow>, ScreenError> {
        // X coordinates are 16-bit; a point outside that range is on no window.
        let (Ok(x), Ok(y)) = (i16::try_from(point.x), i16::try_from(point.y)) else {
            return Ok(None);
        };
        let reply = self
            .conn
            .translate_coordinates(self.root, self.root, x, y)
            .map_err(protocol)?
            .reply()
            .map_err(protocol)?;
        if reply.child == x11rb::NONE {
            return Ok(None);
        }
        let window = self.client_window(reply.child)?;
        Ok(Some(self.describe(window)))
    }
}

impl X11Screen {
    /// A client window as the policy sees it: program, title, pid and class.
    fn describe(&self, window: Window) -> ActiveWindow {
        let title = self
            .text_property(window, self.atoms.net_wm_name, self.atoms.utf8_string)
            .or_else(|| {
                self.text_property(window, AtomEnum::WM_NAME.into(), AtomEnum::STRING.into())
            })
            .unwrap_or_default();
        let class = self.wm_class(window);
        let pid = self.window_pid(window);
        let app_name = app_name(pid.and_then(process_name), class.as_ref());
        ActiveWindow {
            app_name,
            title,
            pid,
            wm_class: class.map(|(_, class)| class),
            window_id: window,
        }
    }
}

/// The program a window belongs to: the executable's name, unless that is an interpreter
/// (terminator and guake run as python3.x, a Node app as node), which says nothing about the
/// window; then WM_CLASS's instance name, lower case. WM_CLASS is what the client says about
/// itself, so it is only taken where the executable says nothing.
fn app_name(process: Option<String>, class: Option<&(String, String)>) -> String {
    let from_class = || {
        class
            .map(|(instance, class)| if instance.is_empty() { class } else { instance })
            .filter(|name| !name.is_empty())
            .map(|name| name.to_lowercase())
    };
    match process {
        Some(name) if is_interpreter(&name) => from_class().unwrap_or(name),
        Some(name) => name,
        None => class
            .map(|(_, class)| class.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "unknown".into()),
    }
}

/// Executables that run a program written in their language: `python3.12` is `python`.
fn is_interpreter(executable: &str) -> bool {
    let base = executable.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    matches!(
        base,
        "python" | "perl" | "ruby" | "node" | "nodejs" | "gjs" | "java" | "wish" | "tclsh" | "lua"
    )
}

/// The executable's file name: /proc/PID/exe names the real binary (argv[0] can say anything,
/// and comm is cut to 15 bytes); comm is the fallback for processes we may not inspect.
fn process_name(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
}

fn intern(conn: &RustConnection, name: &str) -> Result<u32, ScreenError> {
    Ok(conn
        .intern_atom(false, name.as_bytes())
        .map_err(protocol)?
        .reply()
        .map_err(protocol)?
        .atom)
}

/// A System V shared memory segment attached both here and in the X server.
struct ShmSegment {
    xid: u32,
    addr: *mut libc::c_void,
    len: usize,
}

impl ShmSegment {
    fn new(conn: &RustConnection, len: usize) -> Result<Self, ScreenError> {
        // SAFETY: plain libc calls; every result is checked before use, and the segment is
        // marked for removal right after both sides attached, so it cannot leak past exit.
        unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, len, libc::IPC_CREAT | 0o600);
            if id < 0 {
                return Err(ScreenError::Protocol(format!(
                    "shmget of {len} bytes failed: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let addr = libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY);
            if addr as isize == -1 {
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                return Err(ScreenError::Protocol(format!(
                    "shmat failed: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let xid = match conn.generate_id() {
                Ok(xid) => xid,
                Err(e) => {
                    libc::shmdt(addr);
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    return Err(protocol(e));
                }
            };
            let attached = conn
                .shm_attach(xid, id as u32, false)
                .map_err(protocol)
                .and_then(|c| c.check().map_err(protocol));
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
            if let Err(e) = attached {
                libc::shmdt(addr);
                return Err(e);
            }
            Ok(Self { xid, addr, len })
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: addr points at `len` bytes attached for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }
}

impl Drop for ShmSegment {
    fn drop(&mut self) {
        // SAFETY: addr came from a successful shmat and is detached once.
        unsafe {
            libc::shmdt(self.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(instance: &str, class: &str) -> Option<(String, String)> {
        Some((instance.to_owned(), class.to_owned()))
    }

    #[test]
    fn an_interpreter_names_its_window_by_class_and_nothing_else_does() {
        // terminator and guake are Python programs: their executable is python3.x.
        for exe in ["python3.11", "python3", "python", "node", "perl5.36", "gjs"] {
            assert_eq!(
                app_name(Some(exe.into()), class("terminator", "Terminator").as_ref()),
                "terminator",
                "{exe}"
            );
        }
        assert_eq!(
            app_name(Some("python3.11".into()), class("", "Guake").as_ref()),
            "guake"
        );
        assert_eq!(app_name(Some("python3.11".into()), None), "python3.11");
        // A real executable keeps its name whatever the window says about itself.
        for exe in ["xterm", "firefox", "python-editor", "nodejs-app"] {
            assert_eq!(
                app_name(Some(exe.into()), class("code", "Code").as_ref()),
                exe
            );
        }
        assert_eq!(app_name(None, class("xterm", "XTerm").as_ref()), "XTerm");
        assert_eq!(app_name(None, None), "unknown");
    }
}
