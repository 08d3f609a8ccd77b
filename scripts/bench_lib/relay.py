"""Kamailio with rtpengine as a forwarding-only relay: the speed ceiling.

The relay rewrites SDP and forwards RTP in userspace (rtpengine ``--table``
-1, no kernel module); it neither terminates calls nor decodes media, which
the B2BUA does for both legs of every call.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from .rig import EDGE_PORT, TARGET_SIP_PORT, Rig

RTPENGINE = "/usr/bin/rtpengine"
KAMAILIO = "/usr/sbin/kamailio"
NG_PORT = 2223

RELAY_CFG = """#!KAMAILIO
debug=1
log_stderror=yes
children=4
listen=udp:{edge_ip}:{edge_port}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "rtpengine.so"
modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:{ng_port}")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (is_method("BYE")) {{
                rtpengine_delete();
            }}
            t_relay();
        }} else if (is_method("ACK") && t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (!is_method("INVITE")) {{
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }}
    record_route();
    rtpengine_offer("replace-origin replace-session-connection");
    # Caller k dials user t<k>; its echo target listens on port base + k.
    $var(port) = {target_port} + $(rU{{s.substr,1,0}}{{s.int}});
    $du = "sip:{load_ip}:" + $var(port);
    t_on_reply("RELAY_REPLY");
    t_on_failure("RELAY_FAILED");
    t_relay();
    exit;
}}

onreply_route[RELAY_REPLY] {{
    if (status =~ "^2" && has_body("application/sdp")) {{
        rtpengine_answer("replace-origin replace-session-connection");
    }}
}}

failure_route[RELAY_FAILED] {{
    rtpengine_delete();
}}
"""


def start_relay(rig: Rig, folder: Path) -> list[subprocess.Popen[bytes]]:
    """Start rtpengine and Kamailio in the edge namespace; return both."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "rtpengine.log", "ab") as rtpengine_log:
        rtpengine = rig.edge.popen(
            [RTPENGINE, "--foreground", "--log-stderr", "--table=-1",
             f"--interface={rig.edge_ip}", f"--listen-ng=127.0.0.1:{NG_PORT}",
             "--port-min=30000", "--port-max=39999", "--log-level=3",
             f"--pidfile={folder / 'rtpengine.pid'}"],
            stdout=rtpengine_log, stderr=subprocess.STDOUT)
    cfg = folder / "relay.cfg"
    cfg.write_text(RELAY_CFG.format(
        edge_ip=rig.edge_ip, edge_port=EDGE_PORT, ng_port=NG_PORT,
        target_port=TARGET_SIP_PORT, load_ip=rig.load_ip))
    with open(folder / "kamailio.log", "ab") as kamailio_log:
        kamailio = rig.edge.popen(
            [KAMAILIO, "-DD", "-E", "-f", str(cfg), "-Y", str(folder),
             "-m", "256", "-M", "16"],
            stdout=kamailio_log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for process in (rtpengine, kamailio):
            if process.poll() is not None:
                raise RuntimeError(f"relay process exited early; see {folder}")
        listening = rig.edge.run(["ss", "-lun"]).stdout
        if f"{rig.edge_ip}:{EDGE_PORT}" in listening and f":{NG_PORT}" in listening:
            return [rtpengine, kamailio]
        time.sleep(0.2)
    raise RuntimeError(f"relay did not start in time; see {folder}")
