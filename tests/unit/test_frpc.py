"""frpc.py: frpc.toml files written as frp's documentation writes them (every proxy type,
visitors, the legacy INI) turned into tunneld's settings, and every setting that does not
carry over said in a line that names its proxy."""

import tomllib

import pytest

from tunneld.frpc import FrpcError, convert

FRPC_TOML = """
serverAddr = "203.0.113.10"
serverPort = 7000
auth.method = "token"
auth.token = "12345678"
log.to = "./frpc.log"
transport.tls.enable = true

[[proxies]]
name = "ssh"
type = "tcp"
localIP = "127.0.0.1"
localPort = 22
remotePort = 6000
transport.useEncryption = true

[[proxies]]
name = "game"
type = "udp"
localIP = "0.0.0.0"
localPort = 27015
remotePort = 27015

[[proxies]]
name = "api"
type = "tcp"
localPort = 8080
remotePort = 18080
transport.proxyProtocolVersion = "v2"
transport.bandwidthLimit = "1MB"
healthCheck.type = "tcp"
healthCheck.intervalSeconds = 10
loadBalancer.group = "api"
loadBalancer.groupKey = "k"

[[proxies]]
name = "nas"
type = "tcp"
localIP = "192.168.1.20"
localPort = 5000
remotePort = 15000

[[proxies]]
name = "random"
type = "tcp"
localPort = 9000
remotePort = 0
transport.proxyProtocolVersion = "v1"

[[proxies]]
name = "web"
type = "http"
localPort = 80
customDomains = ["www.example.com"]

[[proxies]]
name = "web-tls"
type = "https"
localPort = 443
subdomain = "shop"

[[proxies]]
name = "mux"
type = "tcpmux"
multiplexer = "httpconnect"
localPort = 8081
customDomains = ["mux.example.com"]

[[proxies]]
name = "files"
type = "tcp"
remotePort = 6001
[proxies.plugin]
type = "static_file"
localPath = "/srv"

[[proxies]]
name = "secret-ssh"
type = "stcp"
secretKey = "abcdefg"
localPort = 22

[[proxies]]
name = "p2p-ssh"
type = "xtcp"
secretKey = "abcdefg"
localPort = 22

[[proxies]]
name = "secret-dns"
type = "sudp"
secretKey = "abcdefg"
localPort = 53

[[visitors]]
name = "secret-ssh-visitor"
type = "stcp"
serverName = "secret-ssh"
secretKey = "abcdefg"
bindPort = 6000
"""


def notes_about(c, name):
    return [n for n in c.notes if f"'{name}'" in n]


def test_tcp_and_udp_proxies_become_publish_tables():
    c = convert(FRPC_TOML, "frpc.toml", "edge-1")
    assert c.relay == [
        {"name": "ssh", "node": "edge-1", "port": 22, "remote-port": 6000, "protocol": "tcp"},
        {"name": "game", "node": "edge-1", "port": 27015, "remote-port": 27015, "protocol": "udp"},
        {"name": "api", "node": "edge-1", "port": 8080, "remote-port": 18080, "protocol": "tcp", "proxy-protocol": 2},
        {"name": "random", "node": "edge-1", "port": 9000, "remote-port": 0, "protocol": "tcp", "proxy-protocol": 2},
    ]
    assert c.node == {"relay": "203.0.113.10:7000", "token-file": "/etc/tunneld/token",
                      "advertise-routes": ["192.168.1.20/32"]}


def test_every_setting_not_carried_over_is_said_naming_its_proxy():
    c = convert(FRPC_TOML, "frpc.toml", "edge-1")
    assert any("listens on 127.0.0.1" in n for n in notes_about(c, "ssh"))
    assert any("useEncryption is always on" in n for n in notes_about(c, "ssh"))
    assert not notes_about(c, "game")  # 0.0.0.0: the overlay address is among them
    api = " ".join(notes_about(c, "api"))
    assert "bandwidth limits" in api and "health checks" in api and "load-balancer groups" in api
    assert any("another host" in n and "not published" in n and "tunneld routes approve edge-1 192.168.1.20/32" in n
               for n in notes_about(c, "nas"))
    assert any("remotePort 0" in n for n in notes_about(c, "random"))
    assert any("PROXY protocol v1 is sent as v2" in n for n in notes_about(c, "random"))
    for name, kind in (("web", "http"), ("web-tls", "https"), ("mux", "tcpmux")):
        assert any(f"({kind}) is not carried over: tunneld publishes ports, not virtual hosts" in n
                   for n in notes_about(c, name)), name
    assert any("plugin (static_file)" in n for n in notes_about(c, "files"))
    for name in ("secret-ssh", "p2p-ssh", "secret-dns"):
        assert any("is unnecessary: nodes reach each other on the overlay" in n
                   for n in notes_about(c, name) if n.startswith("proxy")), name
    assert any(n.startswith("visitor 'secret-ssh-visitor' (stcp) is unnecessary") for n in c.notes)
    assert any("auth.token does not carry over" in n for n in c.notes)
    assert any(n.startswith("transport.tls.enable") for n in c.notes) and any(n.startswith("log.to") for n in c.notes)
    assert not any("auth.method" in n for n in c.notes)


def test_the_output_is_valid_toml_for_each_side():
    text = convert(FRPC_TOML, "frpc.toml", "edge-1").render("frpc.toml", "edge-1")
    relay_part, node_part = text.split("# On the node edge-1")
    relay = tomllib.loads(relay_part)
    assert [p["name"] for p in relay["publish"]] == ["ssh", "game", "api"]  # "random" waits for a port
    assert "# name = \"random\"" in relay_part
    from tunneld.publish import parse, parse_allow  # what the relay will make of it
    parsed = parse(relay["publish"], parse_allow(relay["allow-ports"]), 7000)
    assert [(p.name, p.protocol) for p in parsed] == [("ssh", "tcp"), ("game", "udp"), ("api", "tcp")]
    node = tomllib.loads("#" + node_part)
    assert node["relay"] == "203.0.113.10:7000" and node["advertise-routes"] == ["192.168.1.20/32"]


FRPC_INI = """
[common]
server_addr = 198.51.100.7
server_port = 7000
token = 12345678
tcp_mux = true

[ssh]
type = tcp
local_ip = 127.0.0.1
local_port = 22
remote_port = 6000

[dns]
type = udp
local_ip = 127.0.0.1
local_port = 53
remote_port = 6053
proxy_protocol_version = v2

[web]
type = http
local_port = 80
custom_domains = www.example.com

[secret_ssh_visitor]
role = visitor
type = stcp
server_name = secret_ssh
bind_port = 6000
"""


def test_the_legacy_ini_too():
    c = convert(FRPC_INI, "frpc.ini", "edge-2")
    assert c.relay == [{"name": "ssh", "node": "edge-2", "port": 22, "remote-port": 6000, "protocol": "tcp"},
                       {"name": "dns", "node": "edge-2", "port": 53, "remote-port": 6053, "protocol": "udp"}]
    assert any("'dns' (udp): PROXY protocol (v2) is for TCP services" in n for n in c.notes)
    assert c.node["relay"] == "198.51.100.7:7000"
    assert any("'web' (http) is not carried over" in n for n in c.notes)
    assert any(n.startswith("visitor 'secret_ssh_visitor'") for n in c.notes)
    assert any(n.startswith("tcp_mux") for n in c.notes) and any("auth.token" in n for n in c.notes)


@pytest.mark.parametrize("text", ["serverAddr = ", "[[proxies]\n", "just words", "[common\nx=1"])
def test_a_file_that_is_neither_is_refused_in_one_line(text):
    with pytest.raises(FrpcError) as e:
        convert(text, "frpc.toml", "n")
    assert "frpc.toml is neither frpc.toml nor frpc.ini" in str(e.value) and "\n" not in str(e.value)


def test_proxies_that_are_not_tables_are_refused():
    with pytest.raises(FrpcError):
        convert('proxies = ["ssh"]\n', "frpc.toml", "n")


def readme_block(after: str) -> str:
    import os
    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    block = text[text.index(after):]
    block = block[block.index("```toml\n") + 8:]
    return block[:block.index("```")]


def test_the_readmes_side_by_side_is_what_the_import_prints():
    lines = readme_block("### Coming from frp").splitlines()
    left = "\n".join(line[:40].rstrip() for line in lines)
    right = "\n".join(line[40:] for line in lines)
    relay_part, node_part = right.split("# node.toml")
    c = convert(left, "frpc.toml", "edge-1")
    relay = tomllib.loads(relay_part)
    assert relay["publish"] == c.relay
    assert relay["allow-ports"] == [str(p["remote-port"]) for p in c.relay]
    assert tomllib.loads(node_part.split("\n", 1)[1]) == c.node


def test_the_readmes_publish_example_is_what_the_relay_takes():
    from tunneld.publish import parse, parse_allow
    conf = tomllib.loads(readme_block("### Publishing a node's service"))
    got = parse(conf["publish"], parse_allow(conf["allow-ports"]), 7000)
    assert [(p.name, p.node, p.port, p.remote_port, p.protocol) for p in got] == [("web", "edge-1", 8080, 18080, "tcp")]
