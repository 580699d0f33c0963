package metrics

import (
	"testing"

	"github.com/diglett/diglett/internal/autotls"
)

// Certificate orders are counted by result, both at zero from the start,
// and with no label for the host.
func TestCertificates(t *testing.T) {
	m := New()
	expect(t, m, 0, "diglett_certificates_total", "result", "obtained")
	expect(t, m, 0, "diglett_certificates_total", "result", "failed")

	// Wired as the command line wires it.
	on := autotls.Config{OnCertificate: m.CertificateOrdered}.OnCertificate
	on("web.example.com", true)
	on("api.example.com", true)
	on("web.example.com", false)
	expect(t, m, 2, "diglett_certificates_total", "result", "obtained")
	expect(t, m, 1, "diglett_certificates_total", "result", "failed")

	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "diglett_certificates_total" {
			continue
		}
		if n := len(f.GetMetric()); n != 2 {
			t.Errorf("%d series, want 2 (one per result)", n)
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() != "result" {
					t.Errorf("label %s=%s: only result is a label", l.GetName(), l.GetValue())
				}
			}
		}
	}
}
