// Lanyard's WebAuthn glue: passkey sign-in (button and autofill), adding passkeys and security
// keys on the account page, and a security key as the second step. No framework; the server
// does every check, this only carries bytes between it and the browser's authenticator.
"use strict";
(() => {
  const enc = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const dec = (s) => {
    const b = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
    return Uint8Array.from(b, (c) => c.charCodeAt(0));
  };

  const creationOptions = (opts) => {
    const pk = opts.publicKey;
    pk.challenge = dec(pk.challenge);
    pk.user.id = dec(pk.user.id);
    (pk.excludeCredentials || []).forEach((c) => { c.id = dec(c.id); });
    return pk;
  };
  const requestOptions = (opts) => {
    const pk = opts.publicKey;
    pk.challenge = dec(pk.challenge);
    (pk.allowCredentials || []).forEach((c) => { c.id = dec(c.id); });
    return pk;
  };
  const created = (cred) => ({
    id: cred.id,
    rawId: enc(cred.rawId),
    type: cred.type,
    extensions: cred.getClientExtensionResults(),
    response: {
      attestationObject: enc(cred.response.attestationObject),
      clientDataJSON: enc(cred.response.clientDataJSON),
      transports: cred.response.getTransports ? cred.response.getTransports() : [],
    },
  });
  const asserted = (cred) => ({
    id: cred.id,
    rawId: enc(cred.rawId),
    type: cred.type,
    extensions: cred.getClientExtensionResults(),
    response: {
      authenticatorData: enc(cred.response.authenticatorData),
      clientDataJSON: enc(cred.response.clientDataJSON),
      signature: enc(cred.response.signature),
      userHandle: cred.response.userHandle ? enc(cred.response.userHandle) : null,
    },
  });

  const post = async (url, csrf, body) => {
    const r = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body),
    });
    const json = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(json.error || `the server answered ${r.status}`);
    return json;
  };
  const say = (el, text) => { if (el) el.textContent = text; };
  const supported = () => !!(window.PublicKeyCredential && navigator.credentials);

  // Sign in with a passkey: a button, and autofill on the username field where offered.
  const login = document.getElementById("passkey-login");
  if (login) {
    const status = document.getElementById("passkey-status");
    let pending = null;
    const signIn = async (conditional) => {
      if (pending) pending.abort();
      pending = new AbortController();
      const opts = await post("/login/passkey/start", login.dataset.csrf, {});
      const cred = await navigator.credentials.get({
        publicKey: requestOptions(opts),
        mediation: conditional ? "conditional" : "optional",
        signal: pending.signal,
      });
      const done = await post("/login/passkey/finish", login.dataset.csrf, {
        credential: asserted(cred),
        return_to: login.dataset.returnTo,
      });
      window.location.assign(done.redirect);
    };
    const button = document.getElementById("passkey-button");
    if (!supported()) {
      button.hidden = true;
    } else {
      button.addEventListener("click", () => {
        say(status, "Waiting for your passkey…");
        signIn(false).catch((e) => {
          if (e.name !== "AbortError") say(status, `Passkey sign-in did not work: ${e.message}`);
        });
      });
      if (PublicKeyCredential.isConditionalMediationAvailable) {
        PublicKeyCredential.isConditionalMediationAvailable().then((ok) => {
          if (ok) signIn(true).catch(() => {});
        });
      }
    }
  }

  // Add a passkey or a security key from the account page.
  const add = document.getElementById("add-key");
  if (add) {
    const status = document.getElementById("key-status");
    const register = async (kind) => {
      say(status, "Follow your browser's prompt…");
      const opts = await post("/account/keys/start", add.dataset.csrf, { kind });
      const cred = await navigator.credentials.create({ publicKey: creationOptions(opts) });
      const done = await post("/account/keys/finish", add.dataset.csrf, {
        kind,
        name: document.getElementById("key-name").value,
        credential: created(cred),
      });
      const codes = done.recovery_codes || [];
      if (codes.length === 0) {
        window.location.reload();
        return;
      }
      // The first second factor: show the recovery codes, once, before going on.
      const box = document.getElementById("new-recovery-codes");
      box.hidden = false;
      const list = box.querySelector("ul");
      for (const c of codes) {
        const li = document.createElement("li");
        const code = document.createElement("code");
        code.textContent = c;
        li.appendChild(code);
        list.appendChild(li);
      }
      say(status, "Your security key was added.");
    };
    for (const [id, kind] of [["add-passkey", "passkey"], ["add-security-key", "security_key"]]) {
      document.getElementById(id).addEventListener("click", () => {
        register(kind).catch((e) => say(status, `The key was not added: ${e.message}`));
      });
    }
  }

  // A security key as the second step after the password.
  const mfa = document.getElementById("key-mfa");
  if (mfa) {
    const status = document.getElementById("key-mfa-status");
    document.getElementById("key-mfa-button").addEventListener("click", async () => {
      try {
        say(status, "Touch your security key…");
        const opts = await post("/login/mfa/key/start", mfa.dataset.csrf, {});
        const cred = await navigator.credentials.get({ publicKey: requestOptions(opts) });
        const done = await post("/login/mfa/key/finish", mfa.dataset.csrf, { credential: asserted(cred) });
        window.location.assign(done.redirect);
      } catch (e) {
        say(status, `The security key did not work: ${e.message}`);
      }
    });
  }
})();
