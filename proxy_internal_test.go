package diglett

import (
	"net/http"
	"net/url"
	"testing"
)

func TestProxyFromEnvironment(t *testing.T) {
	t.Setenv("HTTPS_PROXY", "http://user:pass@proxy.corp.example:3128")
	t.Setenv("NO_PROXY", "internal.example,10.0.0.0/8")
	pick := proxyFunc(nil)
	for target, want := range map[string]string{
		"https://gw.example:443":         "http://user:pass@proxy.corp.example:3128",
		"https://gw.example:20000":       "http://user:pass@proxy.corp.example:3128",
		"https://a.internal.example:443": "",
		"https://10.1.2.3:443":           "",
		"https://localhost:443":          "", // never through a proxy
	} {
		u, _ := url.Parse(target)
		got, err := pick(&http.Request{URL: u})
		if err != nil {
			t.Fatal(err)
		}
		if (got == nil && want != "") || (got != nil && got.String() != want) {
			t.Errorf("proxy for %s = %v, want %q", target, got, want)
		}
	}
	fixed, _ := url.Parse("http://127.0.0.1:8888")
	if got, _ := proxyFunc(fixed)(&http.Request{URL: &url.URL{Scheme: "https", Host: "127.0.0.1:443"}}); got.String() != fixed.String() {
		t.Errorf("a configured proxy is used for every gateway, got %v", got)
	}
}
