package identity

import (
	"os"
	"path/filepath"
	"testing"
)

func TestKeyPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	k1, created, err := LoadOrCreateKey(dir)
	if err != nil || !created {
		t.Fatalf("first load: created=%v err=%v", created, err)
	}
	k2, created, err := LoadOrCreateKey(dir)
	if err != nil || created {
		t.Fatalf("second load: created=%v err=%v", created, err)
	}
	f1, _ := Fingerprint(k1.Public())
	f2, _ := Fingerprint(k2.Public())
	if f1 != f2 {
		t.Fatalf("fingerprint changed across loads: %s != %s", f1, f2)
	}
	if err := ValidFingerprint(f1); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
	// A new certificate for the same key keeps the fingerprint.
	c1, _ := SelfSigned(k1, "localhost")
	c2, _ := SelfSigned(k2, "127.0.0.1")
	if CertFingerprint(c1.Leaf) != f1 || CertFingerprint(c2.Leaf) != f1 {
		t.Fatal("certificate fingerprint differs from key fingerprint")
	}
}

func TestCorruptKey(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, KeyFile), []byte("not a key"), 0o600)
	if _, _, err := LoadOrCreateKey(dir); err == nil {
		t.Fatal("corrupt key accepted")
	}
}

func TestValidFingerprint(t *testing.T) {
	for _, bad := range []string{"", "SHA256:", "SHA256:abc", "MD5:xx", "SHA256:" + string(make([]byte, 43))} {
		if ValidFingerprint(bad) == nil {
			t.Errorf("ValidFingerprint(%q) accepted", bad)
		}
	}
}

func TestKnownGateways(t *testing.T) {
	k := KnownGateways{Path: filepath.Join(t.TempDir(), "sub", "known_gateways")}
	if _, ok, err := k.Lookup("gw:20000"); ok || err != nil {
		t.Fatalf("empty file: ok=%v err=%v", ok, err)
	}
	if e, added, err := k.Add("GW:20000", fp(1)); err != nil || !added || e.Line != 1 {
		t.Fatalf("add gw: %+v %v %v", e, added, err)
	}
	if e, added, err := k.Add("other:1", fp(2)); err != nil || !added || e.Line != 2 {
		t.Fatalf("add other: %+v %v %v", e, added, err)
	}
	e, ok, err := k.Lookup("gw:20000")
	if err != nil || !ok || e.Fingerprint != fp(1) || e.Line != 1 {
		t.Fatalf("lookup gw = %+v %v %v", e, ok, err)
	}
	e, ok, _ = k.Lookup("other:1")
	if !ok || e.Line != 2 {
		t.Fatalf("lookup other = %+v %v", e, ok)
	}
	if _, ok, _ := k.Lookup("gw:20001"); ok {
		t.Fatal("port ignored in lookup")
	}
	if _, _, err := k.Add("gw:3", "SHA256:a"); err == nil {
		t.Fatal("a malformed fingerprint was pinned")
	}
}
