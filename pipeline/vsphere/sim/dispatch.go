package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io/ioutil"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
)

// ---- HTTP dispatch ----

var (
	thisRe      = regexp.MustCompile(`<_this[^>]*>([^<]+)</_this>`)
	retvalRe    = regexp.MustCompile(`<returnval[^>]*>([^<]+)</returnval>`)
	sessionIDRe = regexp.MustCompile(`<sessionId[^>]*>([^<]+)</sessionId>`)
	quiesceRe   = regexp.MustCompile(`<quiesce[^>]*>true</quiesce>`)
	cookieRe    = regexp.MustCompile(`vmware_soap_session="?([^";]+)"?`)
)

func (h *harness) serve(inner http.Handler, w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/vmpump/"):
		h.control(w, r)
		return
	case strings.HasPrefix(r.URL.Path, "/folder"):
		if !h.validCookie(r) {
			http.Error(w, "session cookie required", http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
		return
	case r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk"):
		inner.ServeHTTP(w, r)
		return
	}
	body, err := ioutil.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = ioutil.NopCloser(bytes.NewReader(body))
	text := string(body)
	switch {
	case strings.Contains(text, "<QueryChangedDiskAreas"):
		h.queryChangedDiskAreas(w, body)
	case strings.Contains(text, "<QueryPerf>") || strings.Contains(text, "<QueryPerf "):
		h.queryPerf(w, body)
	case strings.Contains(text, "<CreateSnapshot_Task"):
		h.createSnapshot(inner, w, r, text)
	case strings.Contains(text, "<RemoveSnapshot_Task"):
		h.removeSnapshot(inner, w, r, text)
	case strings.Contains(text, "<Fetch"):
		h.fetch(inner, w, r)
	case strings.Contains(text, "<RetrievePropertiesEx"):
		h.retrievePaged(inner, w, r)
	case strings.Contains(text, "<ContinueRetrievePropertiesEx"):
		h.continueRetrieve(w, text)
	case strings.Contains(text, "<TerminateSession"):
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		if rec.Code == http.StatusOK {
			h.mu.Lock()
			for _, m := range sessionIDRe.FindAllStringSubmatch(text, -1) {
				delete(h.sessions, m[1])
			}
			h.mu.Unlock()
		}
		copyResponse(w, rec)
	case strings.Contains(text, "<Login"), strings.Contains(text, "<Logout"):
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		h.trackSession(rec, r, strings.Contains(text, "<Logout"))
		copyResponse(w, rec)
	default:
		inner.ServeHTTP(w, r)
	}
}

// fetch answers "no value" where vcsim 0.24 panics reading an unset property (vm.snapshot after
// the last snapshot is removed) and would drop the connection.
func (h *harness) fetch(inner http.Handler, w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	panicked := func() (p bool) {
		defer func() {
			if recover() != nil {
				p = true
			}
		}()
		inner.ServeHTTP(rec, r)
		return false
	}()
	if panicked {
		writeBody(w, http.StatusOK, `<FetchResponse xmlns="urn:vim25"></FetchResponse>`)
		return
	}
	copyResponse(w, rec)
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func (h *harness) trackSession(rec *httptest.ResponseRecorder, r *http.Request, logout bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if logout {
		if m := cookieRe.FindStringSubmatch(r.Header.Get("Cookie")); m != nil {
			delete(h.sessions, m[1])
		}
		return
	}
	for _, c := range rec.Header()["Set-Cookie"] {
		if m := cookieRe.FindStringSubmatch(c); m != nil && rec.Code == http.StatusOK {
			h.sessions[m[1]] = true
		}
	}
}

func (h *harness) validCookie(r *http.Request) bool {
	m := cookieRe.FindStringSubmatch(r.Header.Get("Cookie"))
	if m == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[m[1]]
}

// ---- SOAP plumbing ----

func decodeMethod(body []byte, method string, into interface{}) error {
	dec := xml.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == method {
			return dec.DecodeElement(into, &se)
		}
	}
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func writeBody(w http.ResponseWriter, status int, inner string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+
		`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" `+
		`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" `+
		`xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">`+
		`<soapenv:Body>%s</soapenv:Body></soapenv:Envelope>`, inner)
}

func writeFault(w http.ResponseWriter, kind, msg, property string) {
	detail := ""
	if property != "" {
		detail = "<invalidProperty>" + xmlEscape(property) + "</invalidProperty>"
	}
	if kind == "FileFault" {
		detail = "<file>disk</file>"
	}
	writeBody(w, http.StatusInternalServerError, fmt.Sprintf(
		`<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring>`+
			`<detail><%sFault xmlns="urn:vim25" xsi:type="%s">%s</%sFault></detail></soapenv:Fault>`,
		xmlEscape(msg), kind, kind, detail, kind))
}
