package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"slices"
	"strings"
	"time"
)

// The LUKS key-file socket speaks systemd-cryptsetup's protocol (systemd
// v248 and later): when the key file named in /etc/crypttab is an AF_UNIX
// stream socket, systemd-cryptsetup binds its end to the abstract address
// "\0<random hex>/cryptsetup/<volume>", connects, and reads the key until
// the server closes. The node answers with the raw 32-byte key derived for
// purpose "luks/<volume>" and closes; while it is locked past the wait, it
// closes without a key, and systemd falls back to its other methods (a
// password prompt, a token).

// DefaultLUKSWait is how long a LUKS request waits for the node to unlock
// when LUKSConfig.Wait is zero.
const DefaultLUKSWait = 30 * time.Second

// maxLUKSConns bounds the requests served (or waiting for unlock) at once;
// more are closed at once.
const maxLUKSConns = 16

// luksWriteTimeout bounds writing the key to a peer that does not read.
const luksWriteTimeout = 5 * time.Second

// LUKSConfig configures the LUKS key-file socket.
type LUKSConfig struct {
	// Path is the socket, for example /run/p2pkey/luks.sock. It is 0600
	// (reachable by the daemon's user and root) unless AllowUIDs names
	// other users, then 0666: the peer's credentials decide.
	Path string
	// AllowUIDs may read LUKS keys besides root (uid 0), which always may.
	AllowUIDs []uint32
	// Wait bounds how long a request waits for the node to unlock
	// (DefaultLUKSWait when zero).
	Wait time.Duration
}

// LUKSPurpose is the key purpose of LUKS volume volume: "luks/" + volume.
// `p2pkey key --purpose luks/VOLUME --format raw` prints the same key, to
// enrol it with cryptsetup luksAddKey.
func LUKSPurpose(volume string) string { return "luks/" + volume }

// ServeLUKS serves the LUKS key-file socket until the node closes or the
// returned server is closed.
func (n *Node) ServeLUKS(cfg LUKSConfig) (*SocketServer, error) {
	if cfg.Wait <= 0 {
		cfg.Wait = DefaultLUKSWait
	}
	mode := fs.FileMode(0o600)
	if len(cfg.AllowUIDs) > 0 {
		mode = 0o666
	}
	s, err := n.listenKeySocket("LUKS key socket", cfg.Path, mode, -1)
	if err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		sem := make(chan struct{}, maxLUKSConns)
		for {
			c, err := s.ln.AcceptUnix()
			if err != nil {
				if s.ctx.Err() == nil {
					log.Warnw("LUKS key socket: accept", "err", err)
				}
				return
			}
			select {
			case sem <- struct{}{}:
			default:
				log.Warnw("LUKS key socket: too many requests at once; closing one without a key")
				c.Close()
				continue
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() { <-sem }()
				n.serveLUKSConn(s.ctx, c, cfg)
			}()
		}
	}()
	log.Infow("LUKS key socket listening", "socket", s.path, "wait", cfg.Wait)
	return s, nil
}

// serveLUKSConn answers one systemd-cryptsetup request: the key for the
// volume its address names, if its peer may have it and the node unlocks in
// time; otherwise nothing.
func (n *Node) serveLUKSConn(ctx context.Context, c *net.UnixConn, cfg LUKSConfig) {
	defer c.Close()
	cred, err := peerCredOf(c)
	if err != nil {
		log.Warnw("LUKS key socket: refused a peer whose credentials cannot be read", "err", err)
		return
	}
	if cred.UID != 0 && !slices.Contains(cfg.AllowUIDs, cred.UID) {
		log.Warnw("LUKS key socket: refused a peer that is neither root nor an allowed uid", "uid", cred.UID, "pid", cred.PID)
		return
	}
	volume, err := CryptsetupVolume(c.RemoteAddr())
	if err != nil {
		log.Warnw("LUKS key socket: refused", "uid", cred.UID, "pid", cred.PID, "err", err)
		return
	}
	wctx, cancel := context.WithTimeout(ctx, cfg.Wait)
	defer cancel()
	k, err := n.Key(wctx, LUKSPurpose(volume), true)
	if err != nil {
		log.Warnw("LUKS key socket: no key for the volume; closing without one", "volume", volume, "uid", cred.UID, "err", err)
		return
	}
	defer clear(k)
	c.SetWriteDeadline(time.Now().Add(luksWriteTimeout))
	if _, err := c.Write(k); err != nil {
		log.Warnw("LUKS key socket: write", "volume", volume, "err", err)
		return
	}
	log.Infow("LUKS key served", "volume", volume, "uid", cred.UID, "pid", cred.PID)
}

// errNotCryptsetup: a peer address that is not systemd-cryptsetup's.
var errNotCryptsetup = errors.New(`the peer is not bound to systemd-cryptsetup's abstract address "\0<random>/cryptsetup/<volume>"`)

// CryptsetupVolume returns the volume name in the address systemd-cryptsetup
// binds its end of a key-file connection to: the abstract unix address
// "\0<random>/cryptsetup/<volume>" (Go spells the leading NUL "@"). The
// name must be 1 to 128 printable ASCII characters, without '/' or '\'.
func CryptsetupVolume(addr net.Addr) (string, error) {
	ua, ok := addr.(*net.UnixAddr)
	if !ok || ua == nil {
		return "", errNotCryptsetup
	}
	name, abstract := strings.CutPrefix(ua.Name, "@")
	if !abstract {
		if name, abstract = strings.CutPrefix(ua.Name, "\x00"); !abstract {
			return "", errNotCryptsetup
		}
	}
	random, volume, ok := strings.Cut(name, "/cryptsetup/")
	if !ok || random == "" || strings.Contains(random, "/") {
		return "", errNotCryptsetup
	}
	if len(volume) == 0 || len(volume) > 128 {
		return "", fmt.Errorf("volume name of %d bytes: want 1 to 128", len(volume))
	}
	for _, r := range volume {
		if r <= ' ' || r > '~' || r == '/' || r == '\\' {
			return "", fmt.Errorf("volume name %q: only printable ASCII without '/' or '\\'", volume)
		}
	}
	return volume, nil
}
