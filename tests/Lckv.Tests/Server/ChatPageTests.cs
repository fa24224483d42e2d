using System.Text.Json;
using Lckv.Generation;
using Microsoft.Playwright;
using Xunit.Abstractions;

namespace Lckv.Tests.Server;

/// <summary>
/// A browser test: runs where ../shared and Debian's chromium (/usr/bin/chromium) are present, skips with the reason
/// where either is missing, except under CI=true where it runs and fails.
/// </summary>
public sealed class BrowserFactAttribute : FactAttribute
{
    public const string Chromium = "/usr/bin/chromium";

    public BrowserFactAttribute()
    {
        if (SharedData.IsCi) return;
        if (SharedData.Root is null) Skip = SharedData.SkipReason;
        else if (!File.Exists(Chromium)) Skip = $"{Chromium} not found (apt-get install chromium); browser tests need the system chromium";
    }
}

/// <summary>
/// The chat page at /: served self-contained with its status endpoint behind the key; in headless chromium (driven by
/// Playwright over the system browser, nothing downloaded) a message sent gets a reply streamed into the page that
/// equals the server's greedy answer for the same conversation, while the KV display follows the pool; without a
/// chat template the page says so and completes prompts, and with a key it asks for one.
/// </summary>
public sealed class ChatPageTests(ITestOutputHelper output)
{
    private static readonly JsonSerializerOptions _json = new(JsonSerializerDefaults.Web);

    [SharedFact]
    public async Task ThePageIsServedSelfContainedAndTheStatusEndpointFollowsThePool()
    {
        await using var s = await TestServer.StartAsync(apiKey: "sk-page");
        using var anonymous = new HttpClient { BaseAddress = s.Server.Address, Timeout = TestServer.Timeout };
        // the page itself needs no key (it asks for one); the status it polls does
        foreach (var path in new[] { "/", "/index.html" })
        {
            using var page = await anonymous.GetAsync(path);
            Assert.Equal(200, (int)page.StatusCode);
            Assert.Equal("text/html", page.Content.Headers.ContentType?.MediaType);
            Assert.Contains("connect-src 'self'", page.Headers.GetValues("Content-Security-Policy").Single());
            string html = await page.Content.ReadAsStringAsync();
            Assert.StartsWith("<!DOCTYPE html>", html);
            // nothing from elsewhere: no absolute URLs, no external scripts or stylesheets
            Assert.DoesNotContain("http://", html);
            Assert.DoesNotContain("https://", html);
            Assert.DoesNotContain("<script src", html);
            Assert.DoesNotContain("stylesheet", html);
        }
        Assert.Equal(401, (int)(await anonymous.GetAsync("/v1/lckv/status")).StatusCode);

        var status = JsonDocument.Parse(await s.Http.GetStringAsync("/v1/lckv/status")).RootElement;
        Assert.Equal("tiny", status.GetProperty("model").GetString());
        Assert.Equal(s.Model.ContextLength, status.GetProperty("context_length").GetInt32());
        Assert.False(status.GetProperty("chat_template").GetBoolean());
        Assert.True(status.GetProperty("tokenizer").GetBoolean());
        Assert.Equal(0, status.GetProperty("requests").GetProperty("running").GetInt32());
        var kv = status.GetProperty("kv");
        Assert.Equal(TestServer.BlockSize, kv.GetProperty("block_tokens").GetInt32());
        Assert.Equal(0, kv.GetProperty("blocks_used").GetInt32());
        Assert.Equal(s.Pool.TotalBlocks, kv.GetProperty("blocks_free").GetInt32());
        Assert.Equal(s.Pool.TotalBlocks, kv.GetProperty("blocks_total").GetInt32());
        Assert.Equal(s.Pool.CapacityBytes, kv.GetProperty("bytes_total").GetInt64());

        // a sequence held mid-generation shows in the numbers
        int steps = 0;
        s.Scheduler.AfterStep = () => { if (++steps == 3) s.Scheduler.Paused = true; };
        var reply = s.PostAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}""");
        await TestServer.Eventually(() => s.Scheduler.Paused, "three steps are taken");
        kv = JsonDocument.Parse(await s.Http.GetStringAsync("/v1/lckv/status")).RootElement.GetProperty("kv");
        Assert.Equal(s.Pool.UsedBlocks, kv.GetProperty("blocks_used").GetInt32());
        Assert.True(kv.GetProperty("blocks_used").GetInt32() > 0);
        Assert.Equal(s.Pool.BytesInUse, kv.GetProperty("bytes_used").GetInt64());
        Assert.Equal(s.Pool.TotalBlocks, kv.GetProperty("blocks_used").GetInt32() + kv.GetProperty("blocks_free").GetInt32());
        s.Scheduler.Paused = false;
        Assert.Equal(200, (await reply).Status);
        await s.Drained();
    }

    private static async Task<(IPlaywright Playwright, IBrowser Browser, IPage Page)> OpenAsync(Uri address)
    {
        if (!File.Exists(BrowserFactAttribute.Chromium)) Assert.Fail($"{BrowserFactAttribute.Chromium} not found (apt-get install chromium)");
        var playwright = await Playwright.CreateAsync();
        // the system chromium: Playwright's own browser downloads are never used
        var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = BrowserFactAttribute.Chromium, Headless = true, Timeout = 30_000,
        });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1100, Height = 700 } });
        page.SetDefaultTimeout(20_000);
        await page.GotoAsync(address.ToString());
        return (playwright, browser, page);
    }

    private static async Task<string> LastReply(IPage page)
    {
        await page.WaitForFunctionAsync("() => [...document.querySelectorAll('.msg.assistant')].pop()?.dataset.state === 'done'");
        return await page.Locator(".msg.assistant").Last.Locator(".text").TextContentAsync() ?? "";
    }

    /// <summary>Saves a screenshot beside the test binary (LCKV_SCREENSHOTS names another folder).</summary>
    private async Task Screenshot(IPage page, string name)
    {
        string folder = Environment.GetEnvironmentVariable("LCKV_SCREENSHOTS") is { Length: > 0 } d ? d : AppContext.BaseDirectory;
        string path = Path.Combine(folder, name);
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = path });
        output.WriteLine($"screenshot: {path}");
    }

    [BrowserFact]
    public async Task AMessageSentGetsAStreamedReplyEqualToTheGreedyAnswerWhileTheKvDisplayFollowsThePool()
    {
        await using var s = await TestServer.StartAsync(chat: ServerGenerationTests.Render);
        var first = new List<Lckv.Chat.ChatMessage> { new("system", "Be brief."), new("user", "Tell a story.") };
        string expected = ServerGenerationTests.Alone(ServerGenerationTests.Encode(ServerGenerationTests.Render(first)), 16, SamplingParams.Greedy);
        var (playwright, browser, page) = await OpenAsync(s.Server.Address);
        using var _ = playwright;
        await using var __ = browser;
        var errors = new List<string>();
        page.Console += (_, m) => { if (m.Type == "error") errors.Add(m.Text); };
        page.PageError += (_, e) => errors.Add(e);

        // the first poll fills the KV display with the pool's size; chat mode, no notice
        await page.WaitForFunctionAsync("() => Number(document.getElementById('kv').dataset.polls) > 0");
        Assert.Equal(s.Pool.TotalBlocks.ToString(), await page.GetAttributeAsync("#kv", "data-total"));
        Assert.Equal("0", await page.GetAttributeAsync("#kv", "data-used"));
        Assert.Contains($"0 / {s.Pool.TotalBlocks} blocks", await page.TextContentAsync("#kv-blocks"));
        Assert.False(await page.IsVisibleAsync("#notice"));
        Assert.Contains("tiny", await page.TextContentAsync("#model"));

        await page.FillAsync("#system", "Be brief.");
        await page.FillAsync("#temperature", "0");
        await page.FillAsync("#max_tokens", "16");
        await page.FillAsync("#input", "Tell a story.");

        // the engine holds the sequence after three steps: the page shows part of the reply and the blocks it holds
        int steps = 0;
        s.Scheduler.AfterStep = () => { if (++steps == 3) s.Scheduler.Paused = true; };
        await page.ClickAsync("#send");
        await TestServer.Eventually(() => s.Scheduler.Paused, "three steps are taken");
        await page.WaitForFunctionAsync("() => document.querySelector('.msg.assistant .text').textContent.length > 0");
        await page.WaitForFunctionAsync("() => Number(document.getElementById('kv').dataset.used) > 0");
        Assert.Equal(s.Pool.UsedBlocks.ToString(), await page.GetAttributeAsync("#kv", "data-used"));
        Assert.Equal("streaming", await page.GetAttributeAsync(".msg.assistant", "data-state"));
        string partial = await page.TextContentAsync(".msg.assistant .text") ?? "";
        Assert.True(expected.StartsWith(partial, StringComparison.Ordinal) && partial.Length < expected.Length,
            $"mid-stream the page shows '{partial}', not a proper start of '{expected}'");
        Assert.True(await page.IsEnabledAsync("#stop"));
        Assert.False(await page.IsEnabledAsync("#send"));
        s.Scheduler.AfterStep = null;
        s.Scheduler.Paused = false;

        Assert.Equal(expected, await LastReply(page));
        // the usage line came with the stream; after the reply the display returns to an empty pool
        Assert.Contains("prompt +", await page.Locator(".msg.assistant .meta").TextContentAsync());
        await page.WaitForFunctionAsync("() => document.getElementById('kv').dataset.used === '0'");
        Assert.True(int.Parse((await page.GetAttributeAsync("#kv", "data-peak"))!) > 0);

        // a second turn carries the conversation: the reply equals the greedy answer for all of it
        List<Lckv.Chat.ChatMessage> second = [.. first, new("assistant", expected), new("user", "And then?")];
        string expected2 = ServerGenerationTests.Alone(ServerGenerationTests.Encode(ServerGenerationTests.Render(second)), 16, SamplingParams.Greedy);
        // held mid-stream again for the screenshot (docs/serving.md): a reply arriving, the KV blocks it holds
        steps = 0;
        s.Scheduler.AfterStep = () => { if (++steps == 6) s.Scheduler.Paused = true; };
        await page.FillAsync("#input", "And then?");
        await page.PressAsync("#input", "Enter");
        await TestServer.Eventually(() => s.Scheduler.Paused, "six steps are taken");
        await page.WaitForFunctionAsync("() => document.querySelectorAll('.msg.assistant').length === 2");
        await page.WaitForFunctionAsync("() => [...document.querySelectorAll('.msg.assistant .text')].pop().textContent.length > 0");
        await page.WaitForFunctionAsync($"() => document.getElementById('kv').dataset.used === '{s.Pool.UsedBlocks}'");
        await Screenshot(page, "chat-page-streaming.png");
        s.Scheduler.AfterStep = null;
        s.Scheduler.Paused = false;

        Assert.Equal(expected2, await LastReply(page));
        await page.WaitForFunctionAsync("() => document.getElementById('kv').dataset.used === '0'");
        Assert.Empty(await page.QuerySelectorAllAsync(".msg.error"));
        Assert.Empty(errors);
        await Screenshot(page, "chat-page.png");
        await s.Drained();
    }

    [BrowserFact]
    public async Task WithoutATemplateThePageCompletesPromptsAndWithAKeyItAsksForIt()
    {
        await using var s = await TestServer.StartAsync(apiKey: "sk-page");
        string expected = ServerGenerationTests.Alone(ServerGenerationTests.Encode("Once upon a time"), 8, SamplingParams.Greedy);
        var (playwright, browser, page) = await OpenAsync(s.Server.Address);
        using var _ = playwright;
        await using var __ = browser;

        // no key: the status poll is refused and the page says what it needs
        await page.WaitForFunctionAsync("() => document.getElementById('kv-error').textContent.includes('API key')");
        // sending anyway shows the server's error in the conversation
        await page.FillAsync("#input", "Once upon a time");
        await page.ClickAsync("#send");
        await page.WaitForSelectorAsync(".msg.error");
        Assert.Contains("API key", await page.TextContentAsync(".msg.error .text"));

        // with the key the status arrives: no chat template, so the page offers completion mode
        await page.FillAsync("#apikey", "sk-page");
        await page.WaitForFunctionAsync("() => Number(document.getElementById('kv').dataset.polls) > 0");
        Assert.True(await page.IsVisibleAsync("#notice"));
        Assert.Contains("no chat template", await page.TextContentAsync("#notice"));
        Assert.Equal("sk-page", await page.EvaluateAsync<string>("() => sessionStorage.getItem('lckv.apiKey')"));
        await page.FillAsync("#temperature", "0");
        await page.FillAsync("#max_tokens", "8");
        await page.FillAsync("#input", "Once upon a time");
        await page.ClickAsync("#send");
        Assert.Equal(expected, await LastReply(page));

        // Stop mid-stream: the request is aborted, the page marks the reply stopped and the server frees its blocks
        int steps = 0;
        s.Scheduler.AfterStep = () => { if (++steps == 3) s.Scheduler.Paused = true; };
        await page.FillAsync("#max_tokens", "64");
        await page.FillAsync("#input", "The little dog");
        await page.ClickAsync("#send");
        await TestServer.Eventually(() => s.Scheduler.Paused, "three steps are taken");
        await page.ClickAsync("#stop");
        await page.WaitForFunctionAsync("() => [...document.querySelectorAll('.msg.assistant')].pop()?.dataset.state === 'stopped'");
        await TestServer.Eventually(() => s.Pool.UsedBlocks == 0 && s.Scheduler.Running == 0, "the stopped sequence is retired", TimeSpan.FromSeconds(10));
        Assert.True(await page.IsEnabledAsync("#send"));
        s.Scheduler.AfterStep = null;
        s.Scheduler.Paused = false;
        await s.Drained();
    }
}
