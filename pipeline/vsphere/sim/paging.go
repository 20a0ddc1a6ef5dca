package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
)

// ---- PropertyCollector paging ----

var (
	objectsRe = regexp.MustCompile(`(?s)<objects>.*?</objects>`)
	tokenRe   = regexp.MustCompile(`<token[^>]*>([^<]+)</token>`)
)

// retrievePaged splits vcsim's single answer into pages with a token, as vCenter does for large
// inventories, when the tests asked for it (control "retrieve-page").
func (h *harness) retrievePaged(inner http.Handler, w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	per := h.retrievePage
	h.mu.Unlock()
	rec := httptest.NewRecorder()
	inner.ServeHTTP(rec, r)
	objects := objectsRe.FindAllString(rec.Body.String(), -1)
	if per <= 0 || rec.Code != http.StatusOK || len(objects) <= per {
		copyResponse(w, rec)
		return
	}
	h.writePage(w, "RetrievePropertiesExResponse", objects)
}

func (h *harness) writePage(w http.ResponseWriter, element string, objects []string) {
	h.mu.Lock()
	per := h.retrievePage
	if per <= 0 {
		per = len(objects)
	}
	token := ""
	if len(objects) > per {
		h.pageSeq++
		token = "vmpump-page-" + strconv.Itoa(h.pageSeq)
		h.pages[token] = objects[per:]
		objects = objects[:per]
	}
	h.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, `<%s xmlns="urn:vim25"><returnval>`, element)
	if token != "" {
		fmt.Fprintf(&b, "<token>%s</token>", token)
	}
	b.WriteString(strings.Join(objects, ""))
	fmt.Fprintf(&b, `</returnval></%s>`, element)
	writeBody(w, http.StatusOK, b.String())
}

func (h *harness) continueRetrieve(w http.ResponseWriter, text string) {
	m := tokenRe.FindStringSubmatch(text)
	h.mu.Lock()
	var rest []string
	ok := false
	if m != nil {
		rest, ok = h.pages[m[1]]
		delete(h.pages, m[1])
	}
	h.mu.Unlock()
	if !ok {
		writeFault(w, "InvalidArgument", "unknown token", "token")
		return
	}
	h.writePage(w, "ContinueRetrievePropertiesExResponse", rest)
}
