package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	ma "github.com/multiformats/go-multiaddr"
)

// fileConfig is DATA/config.json, written by init. The daemon's flags of
// the same names override (or, for lists, add to) what it says. Every field
// is documented in configHelp and docs/CONFIG.md; a key that is not one of
// them is an error, so a misspelt key is never silently ignored.
type fileConfig struct {
	Version    int      `json:"version"`
	Listen     []string `json:"listen"`
	Announce   []string `json:"announce,omitempty"`
	Relays     []string `json:"relays,omitempty"`
	NATPortMap bool     `json:"nat_portmap,omitempty"`

	// LUKSSocket serves systemd-cryptsetup's key-file socket there.
	LUKSSocket string `json:"luks_socket,omitempty"`
	// LUKSAllowUIDs may read LUKS keys besides root.
	LUKSAllowUIDs []uint32 `json:"luks_allow_uids,omitempty"`
	// LUKSWait is how long a LUKS request waits for unlock ("30s").
	LUKSWait string `json:"luks_wait,omitempty"`
	// AppSocket serves the application key socket there.
	AppSocket string `json:"app_socket,omitempty"`
	// AppGroup owns the application key socket (mode 0660).
	AppGroup string `json:"app_group,omitempty"`
	// AppAllow are the application rules, e.g. "uid:1000=app/*".
	AppAllow []string `json:"app_allow,omitempty"`
}

// configHelp documents config.json in init's and daemon's help; keep it in
// step with fileConfig and docs/CONFIG.md.
const configHelp = `DATA/config.json (written by init, mode 0600) is a JSON object with these
keys; any other key is an error:
  version          1 (required)
  listen           multiaddrs to listen on (required): TCP, or UDP with /quic-v1
  announce         multiaddrs to advertise instead of the listen addresses
  relays           multiaddrs (with /p2p/ID) of members that relay for this node
  nat_portmap      true: ask the router for a port mapping (UPnP, NAT-PMP)
  luks_socket      path of systemd-cryptsetup's key-file socket (--luks-socket)
  luks_allow_uids  uids besides root that may read LUKS keys (--luks-allow-uid)
  luks_wait        how long a LUKS request waits for unlock, e.g. "30s"
  app_socket       path of the application key socket (--app-socket)
  app_group        group that owns the application key socket (--app-group)
  app_allow        application rules, e.g. "uid:1000=app/*" (--app-allow)
See docs/CONFIG.md.`

func configPath(dataDir string) string { return filepath.Join(dataDir, "config.json") }

// readFileConfig reads DATA/config.json strictly: unknown keys, trailing
// data and unusable listen or announce addresses are usage errors (exit 2)
// naming the file.
func readFileConfig(dataDir string) (fileConfig, error) {
	var fc fileConfig
	path := configPath(dataDir)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fc, fmt.Errorf("%s is not initialised: run 'p2pkey init --data %s' first", dataDir, dataDir)
	}
	if err != nil {
		return fc, err
	}
	bad := func(format string, a ...any) (fileConfig, error) {
		return fc, &statusError{code: exitUsage, err: fmt.Errorf("%s: %s (see 'p2pkey init --help' or docs/CONFIG.md)", path, fmt.Sprintf(format, a...))}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		if k, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return bad("unknown key %s", k)
		}
		return bad("%v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return bad("data after the JSON object")
	}
	if fc.Version != 1 {
		return bad("config version %d is not supported (want 1)", fc.Version)
	}
	if len(fc.Listen) == 0 {
		return bad("listen is empty: name at least one address")
	}
	for _, a := range fc.Listen {
		if err := checkListenAddr(a); err != nil {
			return bad("listen: %v", err)
		}
	}
	for _, a := range fc.Announce {
		if err := checkListenAddr(a); err != nil {
			return bad("announce: %v", err)
		}
	}
	return fc, nil
}

// checkListenAddr reports whether the node's transports (TCP, QUIC,
// WebSocket, WebTransport, WebRTC direct) can listen on addr, naming addr
// and, for the common mistake of a bare UDP port, the fix.
func checkListenAddr(addr string) error {
	m, err := ma.NewMultiaddr(addr)
	if err != nil {
		return fmt.Errorf("%s: not a multiaddr: %v", addr, err)
	}
	var names []string
	for _, c := range m {
		names = append(names, c.Protocol().Name)
	}
	if len(names) > 0 && names[len(names)-1] == "p2p" {
		names = names[:len(names)-1]
	}
	example := "/ip4/0.0.0.0/tcp/" + defaultPort()
	if len(names) == 0 {
		return fmt.Errorf("%s: want an IP or DNS address and a transport, e.g. %s", addr, example)
	}
	switch names[0] {
	case "ip4", "ip6", "dns", "dns4", "dns6":
	default:
		return fmt.Errorf("%s: starts with /%s; want /ip4, /ip6 or /dns, e.g. %s", addr, names[0], example)
	}
	if len(names) < 2 {
		return fmt.Errorf("%s: want an IP or DNS address and a transport, e.g. %s", addr, example)
	}
	rest := strings.Join(names[1:], "/")
	switch rest {
	case "tcp", "tcp/ws", "tcp/wss", "tcp/tls/ws",
		"udp/quic-v1", "udp/quic-v1/webtransport", "udp/webrtc-direct":
		return nil
	case "udp":
		return fmt.Errorf("%s: a UDP address needs a transport: add /quic-v1 (%s/quic-v1)", addr, strings.TrimSuffix(addr, "/"))
	case "udp/quic":
		return fmt.Errorf("%s: /quic (draft-29) is not supported: use /quic-v1", addr)
	}
	return fmt.Errorf("%s: no transport listens on /%s; want /tcp/PORT or /udp/PORT/quic-v1", addr, rest)
}

// clusterFile is the part of DATA/cluster.json, which the node writes once
// it has bootstrapped or joined, that the CLI reads.
type clusterFile struct {
	ClusterID string `json:"cluster_id"`
}

// memberOf returns the cluster the data directory's node already belongs
// to (it has bootstrapped or finished a join), or "" when it belongs to
// none. A join that was interrupted is not membership: the daemon resumes
// it.
func memberOf(dataDir string) string {
	if _, err := os.Stat(filepath.Join(dataDir, "joining.invite")); err == nil {
		return ""
	}
	data, err := os.ReadFile(filepath.Join(dataDir, "cluster.json"))
	if err != nil {
		return ""
	}
	var cf clusterFile
	if json.Unmarshal(data, &cf) != nil || cf.ClusterID == "" {
		return "(unknown)"
	}
	return cf.ClusterID
}
