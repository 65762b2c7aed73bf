"""kube-env's output is read by a root shell and by systemd: nothing in it may run."""

import subprocess

import pytest

from tunneld.errors import TunneldError
import json

from tunneld.kube import flannel_subnet, kube_env, net_conf
from tunneld.proto import messages
from tunneld.proto.errors import ProtocolError


def sourced(text: str, tmp_path) -> dict:
    env = tmp_path / "tunneld.env"
    env.write_text(text)
    out = subprocess.run(["bash", "-c", f"set -a; . {env}; env -0"], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path).stdout
    return dict(kv.split("=", 1) for kv in out.split("\0") if "=" in kv)


def test_every_value_reads_back_literally_in_a_shell(tmp_path):
    env = sourced(kube_env("edge-1.example", "100.64.0.7", "tunneld0", 1380), tmp_path)
    assert env["KUBELET_EXTRA_ARGS"] == "--node-ip=100.64.0.7"
    assert env["FLANNEL_MTU"] == "1330" and env["FLANNELD_ARGS"] == "--iface=tunneld0"
    assert env["FLANNEL_ANNOTATE_COMMAND"] == ("kubectl annotate node edge-1.example "
                                               "flannel.alpha.coreos.com/public-ip-overwrite=100.64.0.7 --overwrite")
    for line in kube_env("edge-1.example", "100.64.0.7", "tunneld0", 1380).splitlines():
        assert line.startswith("#") or line.count("'") == 2 and line.endswith("'")  # single quotes only


@pytest.mark.parametrize("name", ["$(touch pwned)", "`touch pwned`", "a\"; touch pwned; \"", "a'b", "a\nB=1",
                                  "UPPER", "a..b", "-a", "x" * 254])
def test_a_hostile_name_from_the_relay_is_refused_not_written(name, tmp_path):
    with pytest.raises(TunneldError, match="not a Kubernetes node name"):
        kube_env(name, "100.64.0.7", "tunneld0", 1380)
    assert not (tmp_path / "pwned").exists()


def test_a_node_refuses_a_join_reply_or_directory_entry_with_a_hostile_name():
    reply = {"ok": True, "name": "$(reboot)", "address": "100.64.0.7", "network": "100.64.0.0/10",
             "endpoint": "192.0.2.1:7443", "mtu": 1380, "relay_mtu": 1500}
    with pytest.raises(ProtocolError, match="not a node name"):
        messages.decode_join_reply(messages.encode(reply))
    assert messages.decode_join_reply(messages.encode({**reply, "name": "edge-1"}))["name"] == "edge-1"
    entry = ["$(reboot)", bytes(4), bytes(32), True, "", 1380, [], []]
    msg = {"t": "dir", "v": 1, "base": None, "i": 0, "c": 1, "mtu": 1380, "nodes": [entry], "gone": []}
    with pytest.raises(ProtocolError, match="bad node name"):
        messages.decode_control(messages.encode(msg))


def test_flannel_subnet_env_names_the_pod_cidr():
    env = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1382\nFLANNEL_IPMASQ=true\n"
    assert flannel_subnet(env) == "10.244.7.0/24"
    assert flannel_subnet("FLANNEL_NETWORK=10.244.0.0/16\n") is None
    assert flannel_subnet("FLANNEL_SUBNET=not-an-address\n") is None
    assert flannel_subnet("") is None


@pytest.mark.parametrize("mode, backend", [("vxlan", {"Type": "vxlan", "Port": 8472}),
                                            ("routed", {"Type": "extension"})])
def test_net_conf_is_flannels_json(mode, backend):
    conf = json.loads(net_conf(mode, "10.42.0.0/16"))
    assert conf == {"Network": "10.42.0.0/16", "EnableIPv4": True, "Backend": backend}


def test_dual_stack_kubelet_and_flannel_settings(tmp_path):
    """IPv6 (issue 17), not wired yet: with the node's IPv6 overlay address, kubelet gets both
    addresses and flannel's IPv6 VXLAN its MTU; without it nothing changes."""
    from tunneld.kube import node_ip_problem
    env = sourced(kube_env("edge-1", "100.64.0.7", "tunneld0", 1380, "FD3A:5E1C:92F0::6440:7"), tmp_path)
    assert env["KUBELET_EXTRA_ARGS"] == "--node-ip=100.64.0.7,fd3a:5e1c:92f0::6440:7"
    assert env["TUNNELD_NODE_IP6"] == "fd3a:5e1c:92f0::6440:7"
    assert env["FLANNEL_MTU"] == "1330" and env["FLANNEL_MTU6"] == "1310"
    for ip in env["KUBELET_EXTRA_ARGS"].split("=", 1)[1].split(","):  # kubelet's check, for each
        assert node_ip_problem(ip, ["100.64.0.7", "fd3a:5e1c:92f0::6440:7"]) is None
    with pytest.raises(ValueError):
        kube_env("edge-1", "100.64.0.7", "tunneld0", 1380, "$(touch pwned)")
    assert "TUNNELD_NODE_IP6" not in kube_env("edge-1", "100.64.0.7", "tunneld0", 1380)
    conf = json.loads(net_conf("vxlan", "10.244.0.0/16", "fd00:10:244::/56"))
    assert conf["EnableIPv6"] is True and conf["IPv6Network"] == "fd00:10:244::/56"
    assert "EnableIPv6" not in json.loads(net_conf("vxlan", "10.244.0.0/16"))
