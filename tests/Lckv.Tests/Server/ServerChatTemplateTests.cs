using System.Text.Json;
using Lckv.Chat;
using Lckv.Cli;
using Lckv.Generation;
using Lckv.Server;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;

namespace Lckv.Tests.Server;

/// <summary>
/// The chat template behind the server's chat seam, as `lckv serve` builds it: /apply-template returns the rendered
/// prompt, a chat completion is the greedy continuation of exactly that prompt, a conversation the template refuses is
/// a 400 with the template's own message, and a template file that is missing or broken stops `serve` with one line.
/// </summary>
public sealed class ServerChatTemplateTests
{
    private static string Template(string name) => SharedData.Path("chat-templates", name);

    [SharedFact]
    public async Task ApplyTemplateAndChatUseTheRenderedPrompt()
    {
        var render = ServeCommand.ChatRenderer(Template("teknium-OpenHermes-2.5-Mistral-7B.jinja"), TestServer.ModelDir);
        Assert.NotNull(render);
        await using var s = await TestServer.StartAsync(chat: render);
        const string messages = """[{"role":"system","content":"Tell stories."},{"role":"user","content":"Once upon a time"}]""";
        string expected = ChatTemplate.Parse(File.ReadAllText(Template("teknium-OpenHermes-2.5-Mistral-7B.jinja"))).Render(new ChatTemplateInput
        {
            Messages = [new("system", "Tell stories."), new("user", "Once upon a time")], AddGenerationPrompt = true,
        });
        Assert.EndsWith("<|im_start|>assistant\n", expected);

        var (status, body) = await s.PostAsync("/apply-template", $$"""{"messages":{{messages}}}""");
        Assert.Equal(200, status);
        Assert.Equal(expected, body.GetProperty("prompt").GetString());

        var (chatStatus, chat) = await s.PostAsync("/v1/chat/completions", $$"""{"messages":{{messages}},"max_completion_tokens":12,"temperature":0}""");
        Assert.Equal(200, chatStatus);
        string alone = ServerGenerationTests.Alone(LckvServer.EncodeChat(s.Tokenizer, expected, addBos: true), 12, SamplingParams.Greedy);
        Assert.Equal(alone, chat.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
        Assert.Equal(LckvServer.EncodeChat(s.Tokenizer, expected, addBos: true).Length, chat.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
    }

    [SharedFact]
    public async Task AConversationTheTemplateRefusesIsABadRequest()
    {
        // Gemma 2's template raises "System role not supported"
        await using var s = await TestServer.StartAsync(chat: ServeCommand.ChatRenderer(Template("google-gemma-2-2b-it.jinja"), TestServer.ModelDir));
        const string messages = """[{"role":"system","content":"x"},{"role":"user","content":"hi"}]""";
        foreach (var (path, body) in new[] { ("/apply-template", $$"""{"messages":{{messages}}}"""), ("/v1/chat/completions", $$"""{"messages":{{messages}},"max_tokens":2}""") })
        {
            var (status, error) = await s.PostAsync(path, body);
            Assert.Equal(400, status);
            Assert.Contains("System role not supported", error.GetProperty("error").GetProperty("message").GetString());
        }
        var (ok, _) = await s.PostAsync("/apply-template", """{"messages":[{"role":"user","content":"hi"}]}""");
        Assert.Equal(200, ok);
        await s.Drained();
    }

    [SharedFact]
    public void BosIsNotDoubledWhenTheTextBeginsWithIt()
    {
        var tokenizer = TestServer.LoadTokenizer();
        int bos = tokenizer.BosId!.Value;
        var plain = LckvServer.EncodeChat(tokenizer, "hello there", addBos: true);
        Assert.Equal(bos, plain[0]);
        Assert.Equal(tokenizer.Encode("hello there", addBos: false), plain[1..]);
        Assert.Equal(tokenizer.Encode("hello there", addBos: false), LckvServer.EncodeChat(tokenizer, "hello there", addBos: false));
        var withBos = tokenizer.Encode("hello there", addBos: true);
        Assert.Equal(bos, withBos[0]);
    }

    [SharedFact]
    public void ServeRefusesAMissingOrBrokenTemplateFile()
    {
        using var dir = new TempDir();
        CliTests.AssertOneLineError(CliTests.Run("serve", "--model", TestServer.ModelDir, "--chat-template", dir.File("none.jinja"), "--port", "0"), "does not exist");
        File.WriteAllText(dir.File("bad.jinja"), "{% for m in messages %}{{ m.content }");
        CliTests.AssertOneLineError(CliTests.Run("serve", "--model", TestServer.ModelDir, "--chat-template", dir.File("bad.jinja"), "--port", "0"), "");
        Assert.Null(ServeCommand.ChatRenderer(null, TestServer.ModelDir)); // the golden folder has no template
    }
}
