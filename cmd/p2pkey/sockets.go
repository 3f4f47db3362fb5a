package main

import (
	"fmt"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

// keySocketFlags are the daemon's flags for the LUKS and application key
// sockets; config.json can set the same (see fileConfig).
type keySocketFlags struct {
	luksSocket    string
	luksAllowUIDs []uint
	luksWait      time.Duration
	appSocket     string
	appGroup      string
	appAllow      []string
}

func (f *keySocketFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.luksSocket, "luks-socket", "", "serve systemd-cryptsetup's key-file socket here (name it as the key file in /etc/crypttab)")
	fl.UintSliceVar(&f.luksAllowUIDs, "luks-allow-uid", nil, "a uid that may read LUKS keys besides root (repeatable)")
	fl.DurationVar(&f.luksWait, "luks-wait", node.DefaultLUKSWait, "how long a LUKS key request waits for the node to unlock")
	fl.StringVar(&f.appSocket, "app-socket", "", "serve keys to other local users on this socket (key, encrypt, decrypt only)")
	fl.StringVar(&f.appGroup, "app-group", "", "group (name or gid) that owns the application socket, mode 0660")
	fl.StringArrayVar(&f.appAllow, "app-allow", nil, "application rule KIND:ID=PURPOSE[,PURPOSE...], e.g. uid:1000=app/* (repeatable)")
}

// keySockets is what the daemon serves besides the control socket.
type keySockets struct {
	luks *node.LUKSConfig
	app  *node.AppConfig
}

// resolve merges the flags with config.json: a flag given on the command
// line wins; lists add up.
func (f *keySocketFlags) resolve(cmd *cobra.Command, fc fileConfig) (keySockets, error) {
	usage := func(format string, a ...any) (keySockets, error) {
		return keySockets{}, &statusError{code: exitUsage, err: fmt.Errorf(format, a...)}
	}
	var ks keySockets
	changed := cmd.Flags().Changed
	luksPath := fc.LUKSSocket
	if changed("luks-socket") {
		luksPath = f.luksSocket
	}
	wait := f.luksWait
	if !changed("luks-wait") && fc.LUKSWait != "" {
		d, err := time.ParseDuration(fc.LUKSWait)
		if err != nil || d <= 0 {
			return usage("config.json: luks_wait %q: want a duration such as 30s", fc.LUKSWait)
		}
		wait = d
	}
	if wait <= 0 {
		return usage("--luks-wait must be positive")
	}
	uids := append([]uint32(nil), fc.LUKSAllowUIDs...)
	for _, u := range f.luksAllowUIDs {
		if u > 1<<32-1 {
			return usage("--luks-allow-uid %d is not a uid", u)
		}
		uids = append(uids, uint32(u))
	}
	if luksPath != "" {
		ks.luks = &node.LUKSConfig{Path: luksPath, AllowUIDs: uids, Wait: wait}
	} else if len(uids) > 0 {
		return usage("--luks-allow-uid needs --luks-socket")
	}

	appPath, group := fc.AppSocket, fc.AppGroup
	if changed("app-socket") {
		appPath = f.appSocket
	}
	if changed("app-group") {
		group = f.appGroup
	}
	var rules []node.AppRule
	for _, s := range append(append([]string(nil), fc.AppAllow...), f.appAllow...) {
		r, err := node.ParseAppRule(s)
		if err != nil {
			return usage("%v", err)
		}
		rules = append(rules, r)
	}
	switch {
	case appPath != "" && len(rules) == 0:
		return usage("--app-socket needs at least one --app-allow rule (e.g. uid:1000=app/*)")
	case appPath == "" && (len(rules) > 0 || group != ""):
		return usage("--app-allow and --app-group need --app-socket")
	case appPath != "":
		ks.app = &node.AppConfig{Path: appPath, Group: group, Allow: rules}
	}
	return ks, nil
}

// serve starts the sockets on n; on error it closes those it started.
func (ks keySockets) serve(n *node.Node) ([]*node.SocketServer, error) {
	var out []*node.SocketServer
	fail := func(err error) ([]*node.SocketServer, error) {
		for _, s := range out {
			s.Close()
		}
		return nil, err
	}
	if ks.luks != nil {
		s, err := n.ServeLUKS(*ks.luks)
		if err != nil {
			return fail(err)
		}
		out = append(out, s)
	}
	if ks.app != nil {
		s, err := n.ServeApp(*ks.app)
		if err != nil {
			return fail(err)
		}
		out = append(out, s)
	}
	return out, nil
}
