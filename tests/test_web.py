"""The web chat page, end to end in headless Chromium against a live server.

The checkpoint is a real MiniMind model with hand-set weights that make it a bigram machine:
attention and MLP outputs are zeroed, so the last hidden state is the current token's embedding;
the embeddings of a few tokens are orthonormal and lm_head maps each of them to the next token
of a script. Whatever the prompt, the reply is the script, which contains `<b>` markup that the
page must show as text.
"""

import argparse
import shutil
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from minimind.checkpoint import save_checkpoint  # noqa: E402
from minimind.config import ModelConfig  # noqa: E402
from minimind.model import MiniMindForCausalLM  # noqa: E402
from minimind.tokenizer import render_chat  # noqa: E402

SCRIPT = "Look: <b>here"
KEY = "sk-web-key"


def _browser_paths():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return chromium, driver


def scripted_model(tok, script: str) -> MiniMindForCausalLM:
    """A model whose reply to any chat prompt is `script`, then <|im_end|>."""
    start = render_chat(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True)[0][-1]
    chain = [start] + tok.encode(script) + [tok.eos_id]
    assert len(set(chain)) == len(chain), "the script must use distinct tokens (a bigram model has no memory)"
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False)
    assert len(chain) <= cfg.hidden_size
    torch.manual_seed(0)
    model = MiniMindForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:  # the residual stream carries the embedding unchanged
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (token, successor) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[token] = torch.nn.functional.one_hot(torch.tensor(k), 64).float()
            model.lm_head.weight[successor, k] = 2.0  # logit 2 * sqrt(64) = 16 for the successor, 0 elsewhere
    return model


@pytest.fixture(scope="module")
def live(tok, tmp_path_factory):
    from minimind.infer.server import build_server
    from minimind.infer.server_cli import add_commands

    ckpt = save_checkpoint(tmp_path_factory.mktemp("web") / "ckpt", scripted_model(tok, SCRIPT), tok)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["serve", str(ckpt), "--port", "0", "--device", "cpu", "--api-key", KEY])
    args.log_level = "warning"
    server = build_server(args)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _browser_paths()
    if not chromium or not driver_path:
        pytest.skip("needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,760", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    yield driver
    driver.quit()


def open_page(browser, url):
    """Open the page as a browser does after asking for the key (HTTP Basic, the key as password);
    the page's own requests then carry no credentials unless the key is typed into it."""
    import base64

    basic = "Basic " + base64.b64encode(f"me:{KEY}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": basic}})
    browser.get(url + "/")
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


def test_page_needs_the_key(live, browser):
    browser.get(live + "/")  # no credentials: the server asks for them, the page is not sent
    assert "Chat with minimind" not in browser.page_source


def test_chat_page_streams_replies_as_text(live, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, live)
    wait = WebDriverWait(browser, 30)
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(KEY + Keys.TAB)  # "change" stores the key and reloads the model list
    wait.until(lambda d: d.find_element(By.ID, "model").text == "minimind")

    def ask(text: str, n: int):
        browser.find_element(By.ID, "prompt").send_keys(text)
        browser.find_element(By.ID, "send").click()
        return wait.until(lambda d: (r := d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-state=done]"))
                          and len(r) >= n and r[n - 1])

    reply = ask("Hello there", 1)
    assert reply.find_element(By.CSS_SELECTOR, ".content").text == SCRIPT  # the markup is shown as text...
    assert browser.find_elements(By.CSS_SELECTOR, ".msg b") == []  # ...and never became an element
    assert "tokens" in reply.find_element(By.CSS_SELECTOR, ".meta").text  # usage from the final chunk

    # a second turn with thinking on: the whole reply lands in the collapsible thinking block
    browser.find_element(By.ID, "thinking").click()
    reply = ask("And again, thinking first", 2)
    thinking = reply.find_element(By.CSS_SELECTOR, "details.thinking .reasoning")
    assert thinking.get_attribute("textContent") == SCRIPT
    assert [m.text for m in browser.find_elements(By.CSS_SELECTOR, ".msg.user")] == [
        "Hello there", "And again, thinking first"]
    sent = browser.execute_script("return conversation")  # the history the page sends with each turn
    assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant"]
    assert sent[1]["content"] == SCRIPT and sent[3]["reasoning_content"] == SCRIPT
    assert browser.execute_script("return localStorage.getItem('minimind.apiKey')") == KEY
    assert browser.find_element(By.ID, "status").text == ""
    browser.save_screenshot(str(tmp_path / "chat.png"))
    assert (tmp_path / "chat.png").stat().st_size > 1000

    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []


def test_page_reports_a_missing_key(live, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, live)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "model").text in ("API key needed", "minimind"))
    browser.execute_script("loadModel()")  # the page's requests carry no key: refused
    wait.until(lambda d: d.find_element(By.ID, "model").text == "API key needed")
    browser.find_element(By.ID, "prompt").send_keys("Hello")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text)
    assert "API key" in browser.find_element(By.ID, "status").text
    # the failed turn is undone: no bubbles left, the text is back in the input box
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == "Hello"
    browser.save_screenshot(str(tmp_path / "missing-key.png"))
